"""The SessionManager's login policy across app servers sharing Redis: two servers logging
one user in at the same moment still leave what the policy allows."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pooled_sessions import SessionManager, SessionService, Settings
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.engine.engine import new_session_id
from pooled_sessions.errors import StoreError


@pytest.fixture
def url(any_redis_url: str) -> str:
    """A store URL with a fresh prefix, on one server or on the cluster."""
    return any_redis_url


@pytest.fixture
def two_servers(url: str) -> Iterator[tuple[SessionService, SessionService]]:
    a, b = SessionService(url), SessionService(url)
    yield a, b
    a.shutdown(timeout=2)
    b.shutdown(timeout=2)


def race(*logins: Callable[[], object]) -> None:
    """Run the logins at the same moment, on threads."""
    gate = threading.Barrier(len(logins))

    def run(login: Callable[[], object]) -> None:
        gate.wait()
        login()

    threads = [threading.Thread(target=run, args=(login,)) for login in logins]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_simultaneous_logins_on_two_servers_leave_one_session(
    two_servers: tuple[SessionService, SessionService], url: str
) -> None:
    a, b = two_servers
    on_a, on_b = SessionManager(a), SessionManager(b)  # default: end the older sessions
    observer = RedisStore(url, Settings())
    try:
        for round_ in range(10):
            user = f"alice{round_}"
            race(
                functools.partial(on_a.login, user, new_session_id(), "198.51.100.1"),
                functools.partial(on_b.login, user, new_session_id(), "203.0.113.9"),
            )
            live = list(observer.load_user(user))  # what Redis holds, right away
            assert len(live) == 1, f"round {round_}: {len(live)} sessions live"
            deadline = time.monotonic() + 0.1  # the servers' caches agree within 100 ms
            while a.sessions_of(user) != live or b.sessions_of(user) != live:
                assert time.monotonic() < deadline, f"round {round_}: caches disagree"
                time.sleep(0.002)
    finally:
        observer.close()


def test_a_per_user_limit_holds_across_servers(
    two_servers: tuple[SessionService, SessionService],
) -> None:
    a, b = two_servers
    on_a = SessionManager(a, "allow", max_sessions_per_user=2, on_limit="refuse")
    on_b = SessionManager(b, "allow", max_sessions_per_user=2, on_limit="refuse")
    results: list[bool] = []
    race(
        *(
            lambda m=m: results.append(bool(m.login("bob", new_session_id(), "10.0.0.1")))
            for m in (on_a, on_b, on_a, on_b)
        )
    )
    assert sorted(results) == [False, False, True, True]
    assert len(a.sessions_of("bob")) == 2


def test_the_user_lock_is_exclusive_and_times_out(url: str) -> None:
    first, second = RedisStore(url, Settings()), RedisStore(url, Settings())
    try:
        with first.user_lock("carol"):
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked by another server"):
                with second.user_lock("carol", timeout=0.2):
                    pass  # pragma: no cover
            assert 0.2 <= time.monotonic() - started < 1.0
            with second.user_lock("dave", timeout=0.2):  # other users are free
                pass
        with second.user_lock("carol", timeout=0.2):  # released
            pass
    finally:
        first.close()
        second.close()


def test_pool_slots_are_shared_by_every_server(url: str) -> None:
    from pooled_sessions import PoolLimits
    from pooled_sessions.codec import Delete
    from tests.test_redis_store import upsert

    settings = Settings(pool=PoolLimits(max_total=3))
    stores = [RedisStore(url, settings), RedisStore(url, settings)]
    try:
        ids = [f"{n:043d}" for n in range(10)]
        granted: list[str] = []

        def claim(store: RedisStore, sid: str) -> None:
            if store.claim_slot(sid, time.time() + 60, 3):
                granted.append(sid)

        race(*(lambda n=n, sid=sid: claim(stores[n % 2], sid) for n, sid in enumerate(ids)))
        assert len(granted) == 3 and stores[1].slots_in_use() == 3
        assert stores[0].claim_slot(granted[0], time.time() + 90, 3)  # held already: kept
        assert not stores[1].claim_slot("N" * 43, time.time() + 60, 3)
        first = granted[0]
        stores[0].write([upsert(first, created=True)], time.time())
        stores[1].write([Delete(first, "alice", time.time())], time.time())  # frees its slot
        assert stores[1].slots_in_use() == 2
        assert stores[1].claim_slot("N" * 43, time.time() + 0.2, 3)
        assert not stores[0].claim_slot("M" * 43, time.time() + 60, 3)
        time.sleep(0.3)  # the short session expired: its slot is free again
        assert stores[0].claim_slot("M" * 43, time.time() + 60, 3)
    finally:
        for store in stores:
            store.close()
