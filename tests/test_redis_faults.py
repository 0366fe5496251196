"""Redis going away and coming back: nothing accepted is lost, errors are clear, and the
service recovers by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from pooled_sessions import SessionService, Settings
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.errors import StoreUnavailableError
from tests.redis_servers import RedisServer, unique_prefix

pytestmark = pytest.mark.redis
FAST_RETRY: dict[str, Any] = {
    "retry_initial_seconds": 0.05,
    "retry_max_seconds": 0.3,
    "save_delay_seconds": 0.05,
}


def settled(service: SessionService) -> bool:
    """Nothing pending and nothing in flight: the store holds every change."""
    stats = service.stats()
    return bool(
        stats["pending_sessions"] == 0
        and stats.get("inflight_sessions", 0) == 0
        and stats["pending_changes"] == 0
        and stats["flushes"] > 0
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_crash_and_restart_mid_load_loses_no_session(durable_redis: RedisServer) -> None:
    url = f"{durable_redis.url}?prefix={unique_prefix()}&socket_timeout=1"
    created: list[str] = []
    updated: dict[str, int] = {}
    stop = threading.Event()
    with SessionService(url, **FAST_RETRY) as service:

        def load() -> None:
            n = 0
            while not stop.is_set():
                sid = service.create_session(f"user{n}", {"n": n})
                created.append(sid)
                if n % 3 == 0:
                    target = created[n // 2]
                    assert service.update_session(target, {"n": -n})
                    updated[target] = -n
                n += 1
                time.sleep(0.001)

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.3)
        durable_redis.stop(kill=True)  # SIGKILL: a crash
        time.sleep(0.5)
        durable_redis.start()
        time.sleep(0.3)
        stop.set()
        worker.join()
        assert wait_until(lambda: settled(service))
        assert service.stats()["flush_failures"] > 0  # the outage was felt, and survived
    with SessionService(url) as fresh:
        for n, sid in enumerate(created):
            session = fresh.get_session(sid)
            assert session is not None, f"session {n} of {len(created)} lost"
            assert session.attributes["n"] == updated.get(sid, n)
    assert len(created) > 100


def test_a_read_that_cannot_be_served_names_the_server(durable_redis: RedisServer) -> None:
    url = f"{durable_redis.url}?prefix={unique_prefix()}&socket_connect_timeout=0.5"
    with SessionService(url, **FAST_RETRY) as service:
        cached = service.create_session("alice")
        service.force_save()
        durable_redis.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{durable_redis.port}"):
            service.validate_session("U" * 43)  # not cached: needs Redis
        assert time.monotonic() - started < 5
        assert service.validate_session(cached)  # cached: still served
        late = service.create_session("bob")  # accepted, kept pending
        with pytest.raises(StoreUnavailableError):
            service.force_save()
        durable_redis.start()
        observer = RedisStore(url, Settings())
        assert wait_until(lambda: observer.load(late) is not None)  # written on its own
        observer.close()
        assert service.validate_session("U" * 43).reason.value == "not_found"
    with SessionService(url) as fresh:
        assert fresh.get_session(late) is not None and fresh.get_session(cached) is not None


def test_a_restart_that_lost_the_data_brings_no_session_back(tmp_path: Path) -> None:
    """Redis cannot tell a session it lost from one it expired, evicted or ended (the
    tombstones went too), so a late change is refused and the session is gone everywhere;
    a creation not yet written is still written."""
    server = RedisServer(tmp_path / "volatile").start()  # no persistence at all
    url = f"{server.url}?prefix=p"
    try:
        with SessionService(url, **{**FAST_RETRY, "save_delay_seconds": 60}) as service:
            sid = service.create_session("alice", {"a": 1, "b": 2})
            service.force_save()
            pending = service.create_session("bob", {"cart": [1]})
            server.restart()  # every key is gone
            assert service.update_session(sid, {"a": 3})  # served from the cache
            service.force_save()
            assert service.validate_session(sid).reason.value == "not_found"
            assert service.validate_session(pending)
        with SessionService(url) as fresh:
            assert fresh.get_session(sid) is None
            written = fresh.get_session(pending)
            assert written is not None and written.attributes == {"cart": [1]}
    finally:
        server.stop()


class ReplyLost:
    """A client whose first pipeline runs on the server but whose reply never arrives."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def pipeline(self, transaction: bool = False) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        outer = self

        class Pipe:
            def execute_command(self, *args: Any) -> None:
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]

            def execute(self, raise_on_error: bool = True) -> Any:
                replies = pipe.execute(raise_on_error=raise_on_error)
                if outer.lost == 0 and any(str(r) == "[1, 1]" for r in replies):
                    outer.lost += 1
                    raise redis.ConnectionError("connection reset while reading the reply")
                return replies

        return Pipe()


def test_a_batch_whose_reply_was_lost_is_retried_harmlessly(redis_server: RedisServer) -> None:
    client = ReplyLost(redis.Redis(port=redis_server.port))
    store = RedisStore(settings=Settings(key_prefix=unique_prefix()), client=client)
    with SessionService(store=store, **FAST_RETRY) as service:
        first = service.create_session("alice", {"n": 1})
        second = service.create_session("alice", {"n": 2})
        assert wait_until(lambda: settled(service))  # after one failure, then the retry
        assert client.lost == 1 and service.stats()["flush_failures"] == 1
        assert store.count() == 2
        assert set(store.load_user("alice")) == {first, second}
        assert service.sessions_of("alice") == [first, second]
    client.client.close()
