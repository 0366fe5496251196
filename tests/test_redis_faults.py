"""Redis going away and coming back: nothing accepted is lost, errors are clear, and the
service recovers by itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from pooled_sessions import AsyncSessionService, SessionService, Settings
from pooled_sessions.adapters.redis import events
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.adapters.redis.store_async import AsyncRedisStore
from pooled_sessions.codec import Delete
from pooled_sessions.errors import StoreUnavailableError
from pooled_sessions.testing.records import make_record, upsert
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


@pytest.mark.parametrize("write_behind", [False, True], ids=["commit", "write-behind"])
def test_a_crash_and_restart_mid_load_loses_no_session(
    durable_redis: RedisServer, write_behind: bool
) -> None:
    """Written behind, every call succeeds and its change is kept until the store takes
    it; committed, a call during the outage raises, and every call that returned holds."""
    url = f"{durable_redis.url}?prefix={unique_prefix()}&socket_timeout=1"
    created: dict[str, int] = {}
    updated: dict[str, int] = {}
    unsure: dict[str, set[int]] = {}  # an update that raised may have run (its reply lost)
    refused = 0
    stop = threading.Event()
    with SessionService(url, write_behind=write_behind, **FAST_RETRY) as service:

        def load() -> None:
            nonlocal refused
            n = 0
            order: list[str] = []
            while not stop.is_set():
                try:
                    sid = service.create_session(f"user{n}", {"n": n})
                    created[sid] = n
                    order.append(sid)
                    if n % 3 == 0:
                        target = order[len(order) // 2]
                        unsure.setdefault(target, set()).add(-n)
                        assert service.update_session(target, {"n": -n})
                        updated[target] = -n
                except StoreUnavailableError:
                    assert not write_behind, "written behind, a call never waits for Redis"
                    refused += 1
                n += 1
                time.sleep(0.001)

        worker = threading.Thread(target=load)
        worker.start()
        assert wait_until(lambda: len(created) >= 60), "the load runs before the crash"
        durable_redis.stop(kill=True)  # SIGKILL: a crash
        time.sleep(0.5)
        durable_redis.start()
        before = len(created)
        assert wait_until(lambda: len(created) >= before + 60, timeout=20), "and after it"
        stop.set()
        worker.join()
        assert wait_until(lambda: settled(service))
        assert service.stats()["flush_failures"] > 0  # the outage was felt, and survived
    with SessionService(url) as fresh:
        for sid, n in created.items():
            session = fresh.get_session(sid)
            assert session is not None, f"session {n} lost"
            value = session.attributes["n"]
            assert value == updated.get(sid, n) or value in unsure.get(sid, ())
    assert len(created) >= 120
    assert write_behind or refused > 0, "committed, the outage was felt by the callers"


def test_a_read_that_cannot_be_served_names_the_server(durable_redis: RedisServer) -> None:
    url = f"{durable_redis.url}?prefix={unique_prefix()}&socket_connect_timeout=0.5"
    with SessionService(url, write_behind=True, **FAST_RETRY) as service:
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
        with SessionService(
            url, **{**FAST_RETRY, "save_delay_seconds": 60, "write_behind": True}
        ) as service:
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


class FaultyClient:
    """A redis-py client whose pipelines pass through `fault`, before they are sent
    (``replies`` None) and after their replies came; `fault` may raise to cut them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def fault(self, replies: list[Any] | None) -> None:
        """Raise to drop the connection at this point."""

    def pipeline(self, transaction: bool = False) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        outer = self

        class Pipe:
            def execute_command(self, *args: Any, **options: Any) -> None:
                pipe.execute_command(*args, **options)  # type: ignore[no-untyped-call]

            def execute(self, raise_on_error: bool = True) -> Any:
                outer.fault(None)
                replies = pipe.execute(raise_on_error=raise_on_error)
                outer.fault(replies)
                return replies

        return Pipe()


class ReplyLost(FaultyClient):
    """A client whose first pipeline runs on the server but whose reply never arrives."""

    lost = 0

    def fault(self, replies: list[Any] | None) -> None:
        if replies is not None and self.lost == 0 and any(str(r) == "[1, 1]" for r in replies):
            self.lost += 1
            raise redis.ConnectionError("connection reset while reading the reply")


def test_a_batch_whose_reply_was_lost_is_retried_harmlessly(redis_server: RedisServer) -> None:
    client = ReplyLost(redis.Redis(port=redis_server.port))
    store = RedisStore(settings=Settings(key_prefix=unique_prefix()), client=client)
    with SessionService(store=store, write_behind=True, **FAST_RETRY) as service:
        first = service.create_session("alice", {"n": 1})
        second = service.create_session("alice", {"n": 2})
        assert wait_until(lambda: settled(service))  # after one failure, then the retry
        assert client.lost == 1 and service.stats()["flush_failures"] == 1
        assert store.count() == 2
        assert set(store.load_user("alice")) == {first, second}
        assert service.sessions_of("alice") == [first, second]
    client.client.close()


class CutAfterEnd(FaultyClient):
    """A client whose connection drops, once armed, after one pipeline got through and
    before the next is sent: a login's end written, its new id not."""

    armed = False
    sent = 0

    def fault(self, replies: list[Any] | None) -> None:
        if self.armed and replies is None:
            self.sent += 1
            if self.sent == 2:
                raise redis.ConnectionError("connection reset before the pipeline")


def test_a_login_cut_short_after_its_end_is_written_when_sent_again(
    redis_server: RedisServer,
) -> None:
    """Written behind, a login's end and its new id go in two pipelines when they do not
    fit one script call (here: one operation a call): when only the first got through,
    the batch sent again finds the end its own, not one made elsewhere, and writes the
    new id (it was refused, logging the user out)."""
    client, settings = (
        CutAfterEnd(redis.Redis(port=redis_server.port)),
        Settings(key_prefix=unique_prefix()),
    )
    url = f"{redis_server.url}?chunk_size=1"
    store = RedisStore(url, settings=settings, client=client)
    with SessionService(store=store, write_behind=True, **FAST_RETRY) as service:
        old = service.create_session("alice", {"cart": [1]})
        service.force_save()
        client.armed = True
        new = service.rotate_session(old)
        assert new is not None
        assert wait_until(lambda: settled(service))
        assert client.sent >= 3 and service.stats()["flush_failures"] == 1
        record = store.load(new)
        assert record is not None and record["attributes"] == {"cart": [1]}
        assert store.load(old) is None and store.ended(old)
        assert set(store.load_user("alice")) == {new}
    with SessionService(store=RedisStore(settings=settings, client=client.client)) as peer:
        assert peer.validate_session(new) and not peer.validate_session(old)
    client.client.close()


class CountingPipelines(FaultyClient):
    """A client that counts the pipelines it sends."""

    sent = 0

    def fault(self, replies: list[Any] | None) -> None:
        self.sent += replies is None


@pytest.mark.parametrize("ended_elsewhere", [False, True], ids=["held", "ended elsewhere"])
def test_a_login_on_one_server_is_one_round_trip(
    redis_server: RedisServer, ended_elsewhere: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of the old id and the create of the new one go in one script call, which
    writes the new id only if the end found the old session: a session another server
    ended (its event not heard yet: the listener is silenced) is not revived under the
    new id."""
    monkeypatch.setattr(events.EventListener, "catch_up", lambda self: None)
    monkeypatch.setattr(events.Subscription, "handle", lambda self, message: True)
    client = CountingPipelines(redis.Redis(port=redis_server.port))
    settings = Settings(key_prefix=unique_prefix())
    store = RedisStore(settings=settings, client=client)
    with SessionService(store=store) as service:
        old = service.create_session("alice", {"cart": [1]})
        if ended_elsewhere:
            other = RedisStore(settings=settings, client=client.client)
            other.write([Delete(old, "alice", time.time())], time.time())
            other.close()
        before = client.sent
        new = service.rotate_session(old, username="alice")
        if ended_elsewhere:
            assert new is None and store.load_user("alice") == {}
        else:
            assert client.sent - before == 1, "the login's commit is one pipeline"
            assert new is not None and set(store.load_user("alice")) == {new}
            record = store.load(new)
            assert record is not None and record["attributes"] == {"cart": [1]}
        assert store.load(old) is None
    client.client.close()


def test_a_change_while_redis_is_down_raises_and_changes_nothing(
    durable_redis: RedisServer,
) -> None:
    port = durable_redis.port
    url = f"{durable_redis.url}?prefix={unique_prefix()}&socket_connect_timeout=0.5"
    with SessionService(url, **FAST_RETRY) as service:
        cart = service.create_session("alice", {"cart": [1]})
        logout = service.create_session("bob")
        assert service.validate_session(logout)
        durable_redis.stop()
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            service.update_session(cart, {"cart": [1, 2]})
        result = service.validate_session(cart)
        assert result and result.session is not None
        assert result.session.attributes == {"cart": [1]}, "the copy held is as it was"
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            service.create_session("carol")
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            service.end_session(logout)
        assert not service.validate_session(logout), "refused here at once"
        stats = service.stats()
        assert stats["store_ok"] is False and stats["unwritten_ends"] == 1
        assert str(port) in stats["last_error"]
        durable_redis.start()
        assert wait_until(lambda: service.stats()["unwritten_ends"] == 0), "retried until written"
        assert service.stats()["store_ok"] is True
        assert service.sessions_of("carol") == []
    observer = RedisStore(url, Settings())
    assert observer.load(logout) is None and observer.ended(logout)
    record = observer.load(cart)
    assert record is not None and record["attributes"] == {"cart": [1]}
    observer.close()


async def test_an_asyncio_change_while_redis_is_down_raises_and_changes_nothing(
    durable_redis: RedisServer,
) -> None:
    url = f"{durable_redis.url}?prefix={unique_prefix()}&socket_connect_timeout=0.5"
    async with AsyncSessionService(url, **FAST_RETRY) as service:
        cart = await service.create_session("alice", {"cart": [1]})
        logout = await service.create_session("bob")
        durable_redis.stop()
        with pytest.raises(StoreUnavailableError, match=str(durable_redis.port)):
            await service.update_session(cart, {"cart": [1, 2]})
        session = await service.get_session(cart)
        assert session is not None and session.attributes == {"cart": [1]}
        with pytest.raises(StoreUnavailableError):
            await service.end_session(logout)
        assert not await service.validate_session(logout)
        durable_redis.start()
        for _ in range(1000):
            if (await service.stats())["unwritten_ends"] == 0:
                break
            await asyncio.sleep(0.01)
        assert (await service.stats())["unwritten_ends"] == 0, "retried until written"
    observer = RedisStore(url, Settings())
    assert observer.load(logout) is None
    record = observer.load(cart)
    assert record is not None and record["attributes"] == {"cart": [1]}
    observer.close()


def test_a_write_connection_dropped_by_the_server_is_opened_again(
    redis_server: RedisServer,
) -> None:
    """Commits go through a connection the store keeps for its writes: one the server
    closed between two commits is opened again, and the commit goes through."""
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    killer = redis.Redis(port=redis_server.port)
    with SessionService(url) as service:
        sid = service.create_session("alice", {"n": 0})
        store = service._store
        assert isinstance(store, RedisStore) and store._writer is not None
        before = store._writer._sock.getsockname()
        assert killer.client_kill(f"{before[0]}:{before[1]}")
        assert service.update_session(sid, {"n": 1})
        assert store._writer._sock.getsockname() != before  # a new connection
        assert service.stats()["store_ok"] is True
    killer.close()
    with SessionService(url) as fresh:
        session = fresh.get_session(sid)
        assert session is not None and session.attributes == {"n": 1}


async def test_an_asyncio_write_cancelled_before_its_reply_leaves_no_reply_behind(
    redis_server: RedisServer,
) -> None:
    """A write cancelled while Redis holds it leaves no reply behind on the store's write
    connection to be read as the next write's (the next here is refused, the first was not)."""
    settings = Settings(key_prefix=unique_prefix())
    store = AsyncRedisStore(redis_server.url, settings)
    pauser = redis.Redis(port=redis_server.port)
    try:
        now = time.time()
        first = await store.write([upsert("A" * 43, make_record(now))], now)
        assert not first.refused
        ended = "E" * 43
        await store.write([Delete(ended, "bob", now)], now)
        pauser.client_pause(300, all=False)
        late = asyncio.ensure_future(store.write([upsert("C" * 43, make_record(now))], now))
        await asyncio.sleep(0.05)
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        again = await store.write([upsert(ended, make_record(now, "bob"))], now)
        assert again.refused == {ended}, "the reply read is this write's own"
    finally:
        pauser.client_unpause()
        pauser.close()
        await store.close()


def test_a_small_connection_pool_is_not_held_by_the_writes(redis_server: RedisServer) -> None:
    """With ``max_connections=2`` (the event subscription takes one), a commit borrows the
    other for its round trip only, so reads of sessions not cached still find it free."""
    url = f"{redis_server.url}?prefix={unique_prefix()}&max_connections=2"
    with SessionService(url) as writer, SessionService(url) as reader:
        sid = writer.create_session("alice", {"n": 0})
        for n in range(1, 4):
            assert writer.update_session(sid, {"n": n})
            session = reader.get_session(sid)
            assert session is not None and session.attributes == {"n": n}
            assert writer.sessions_of("alice") == [sid]  # a read through the pool


def test_a_commit_on_one_server_is_one_exchange_on_the_write_connection(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store opened from a URL (a plain client) sends each commit, a login's included, as
    one exchange on its own connection: one round trip, led by the apply script."""
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    exchanges: list[list[str]] = []
    exchange = RedisStore._exchange

    def counting(self: RedisStore, commands: list[Any]) -> list[Any]:
        exchanges.append([command[0] for command in commands])
        return exchange(self, commands)

    monkeypatch.setattr(RedisStore, "_exchange", counting)
    with SessionService(url) as service:
        service.create_session("bob")  # the server learns the script (NOSCRIPT, then EVAL)
        exchanges.clear()
        old = service.create_session("alice", {"cart": [1]})
        assert service.update_session(old, {"cart": [1, 2]})
        new = service.rotate_session(old, username="alice")
        assert new is not None and service.end_session(new)
        assert [kinds[0] for kinds in exchanges] == ["EVALSHA"] * 4, exchanges
    with SessionService(url) as fresh:
        assert fresh.get_session(old) is None and fresh.get_session(new) is None
