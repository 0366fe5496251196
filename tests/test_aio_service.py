"""AsyncSessionService: the API as coroutines, the flusher task, concurrency and cancellation.

The conformance suite (tests/test_conformance.py) also runs on this service through a
synchronous facade (tests/aio_backends.py); the tests here are about what only an
asyncio driver can get wrong: tasks, cancellation, waiting without blocking the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import (
    AsyncSessionService,
    BackPressureError,
    ConfigError,
    PoolExhaustedError,
    Reason,
    ServiceClosedError,
    SessionError,
    SessionPoolConfig,
    SessionService,
    Settings,
    StoreUnavailableError,
)
from pooled_sessions.adapters.memory import AsyncMemoryStore, MemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.aio import FLUSHER_NAME
from pooled_sessions.codec import Operation, Record, WriteResult

ROOT = Path(__file__).resolve().parent.parent


class GatedStore:
    """An `AsyncMemoryStore` whose writes can be held at a gate, made to fail, and counted."""

    def __init__(self) -> None:
        self.inner = AsyncMemoryStore(StoreURL.parse("memory://"), Settings())
        self.url = "memory://gated"
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail: Exception | None = None
        self.writes = self.active = self.most_active = 0
        self.watcher: Callable[[Collection[str] | None, bool], None] | None = None

    async def load(self, session_id: str) -> Record | None:
        return await self.inner.load(session_id)

    async def load_user(self, username: str) -> Mapping[str, Record]:
        return await self.inner.load_user(username)

    async def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.started.set()
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            result = await self.inner.write(operations, now)
            self.writes += 1
            return result
        finally:
            self.active -= 1

    async def purge_expired(self, now: float) -> int:
        return await self.inner.purge_expired(now)

    async def poll(self) -> bool:
        return await self.inner.poll()

    async def scan(self) -> AsyncIterator[tuple[str, Record]]:
        async for pair in self.inner.scan():
            yield pair

    async def count(self) -> int:
        return await self.inner.count()

    async def close(self) -> None:
        await self.inner.close()


class WatchedStore(GatedStore):
    """A store that pushes other servers' changes (the optional ``watch`` hook)."""

    async def watch(self, callback: Callable[[Collection[str] | None, bool], None]) -> None:
        self.watcher = callback


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture(params=["memory", "aiofile"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"aiofile://{tmp_path / 's.json'}"


# -- the API -------------------------------------------------------------------------------


def test_every_method_of_the_sync_service_is_a_coroutine_with_its_signature() -> None:
    names = {n for n, v in vars(SessionService).items() if callable(v) and not n.startswith("_")}
    assert names >= {"create_session", "validate_session", "shutdown", "force_save", "stats"}
    for name in names:
        method = getattr(AsyncSessionService, name)
        sync = inspect.signature(getattr(SessionService, name)).parameters
        assert inspect.signature(method).parameters == sync, name
        if name != "exclusive":  # a context manager: ``async with`` here, ``with`` there
            assert inspect.iscoroutinefunction(method), name


async def test_exclusive_is_an_async_context_manager() -> None:
    async with AsyncSessionService("memory://") as svc:
        async with svc.exclusive("alice"):  # no user lock on this store: nothing to hold
            sid = await svc.create_session("alice")
        assert await svc.sessions_of("alice") == [sid]


@pytest.mark.redis
async def test_exclusive_holds_a_user_across_servers_and_writes_before_release(
    redis_url: str,
) -> None:
    async with AsyncSessionService(redis_url) as one, AsyncSessionService(redis_url) as two:
        async with one.exclusive("carol"):
            sid = await one.create_session("carol")
            with pytest.raises(SessionError):
                async with two.exclusive("carol", timeout=0.1):
                    pass
        assert await two.sessions_of("carol") == [sid], "written before the lock went"
        async with two.exclusive("carol", timeout=0.5):
            pass


async def test_the_whole_api(url: str) -> None:
    async with AsyncSessionService(url, expire_minutes=0.5) as svc:
        sid = await svc.create_session("alice", {"role": "admin"}, {"ip": "203.0.113.7"})
        result = await svc.validate_session(sid, {"ip": "203.0.113.7"})
        assert result and result.reason is Reason.OK and result.session is not None
        assert result.session.attributes == {"role": "admin"}
        assert (await svc.validate_session(sid, {"ip": "198.51.100.1"})).client_changed
        assert await svc.update_session(sid, {"cart": [3, 7]}, remove=["role"])
        session = await svc.get_session(sid)
        assert session is not None and session.attributes == {"cart": [3, 7]}
        new = await svc.rotate_session(sid)
        assert new is not None and new != sid and await svc.get_session(sid) is None
        own = await svc.create_session("alice", session_id="framework-made-id")
        assert await svc.sessions_of("alice") == [new, own]
        assert await svc.end_session(own) and not await svc.end_session(own)
        assert await svc.force_save() >= 1
        assert await svc.async_force_save() == 0
        stats = await svc.stats()
        assert stats["pending_changes"] == 0 and stats["flushes"] >= 1
        assert stats["live_sessions"] == 1 and stats["closed"] is False
        assert (await svc.validate_session("not an id")).reason is Reason.INVALID_ID
        with pytest.raises(SessionError, match="already in use"):
            await svc.create_session("bob", session_id=new)
    assert (await svc.stats())["closed"] is True
    async with AsyncSessionService(url) as again:
        if url.startswith("aiofile"):
            kept = await again.get_session(new)
            assert kept is not None and kept.attributes == {"cart": [3, 7]}


async def test_shutdown_is_idempotent_and_closes_the_service(url: str) -> None:
    svc = AsyncSessionService(url, save_delay_seconds=3600)
    sid = await svc.create_session("alice")
    first, second = await asyncio.gather(svc.shutdown(), svc.shutdown())
    assert first.complete and first.written == 1
    assert second.complete and second.written == 0
    assert (await svc.shutdown()).written == 0
    with pytest.raises(ServiceClosedError):
        await svc.validate_session(sid)
    with pytest.raises(ServiceClosedError):
        await svc.force_save()


async def test_changes_are_written_behind_by_the_flusher_task() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store, save_delay_seconds=0.05,
                                   batch_save_threshold=1000) as svc:
        ids = [await svc.create_session(f"u{n}") for n in range(20)]
        assert store.writes == 0, "nothing is written per change"
        assert await eventually(lambda: _true(store.writes == 1))
        assert all([await store.inner.load(sid) is not None for sid in ids])
        for n in range(1000):
            await svc.update_session(ids[0], {"n": n})
        assert await eventually(lambda: _true(store.writes == 2)), "the threshold flushes"
        assert (await svc.stats())["writes_saved"] >= 999


async def _true(value: bool) -> bool:
    return value


async def test_write_through_writes_before_returning() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store, save_delay_seconds=0) as svc:
        sid = await svc.create_session("alice")
        assert store.writes == 1
        assert await svc.update_session(sid, {"a": 1})
        assert store.writes == 2
        store.fail = StoreUnavailableError("store down")
        with pytest.raises(StoreUnavailableError):
            await svc.update_session(sid, {"a": 2})
        assert await svc.validate_session(sid), "a read is not failed by the store"
        store.fail = None


# -- concurrency -------------------------------------------------------------------------


async def user(svc: AsyncSessionService, n: int) -> tuple[str, dict[str, Any] | None]:
    """One user's requests; each await of a handler lets other tasks (and the flusher) run."""
    sid = await svc.create_session(f"user{n % 100}", {"n": n}, {"ip": "192.0.2.1"})
    await asyncio.sleep(0)
    assert (await svc.validate_session(sid, {"ip": "192.0.2.1"})).valid
    await asyncio.sleep(0)
    assert await svc.update_session(sid, {"step": 1})
    await asyncio.sleep(0)
    if n % 10 == 0:
        assert await svc.end_session(sid)
        return sid, None
    return sid, {"n": n, "step": 1}


async def a_thousand_users(svc: AsyncSessionService) -> dict[str, dict[str, Any] | None]:
    async with svc:
        outcome = dict(await asyncio.gather(*(user(svc, n) for n in range(1000))))
        await svc.force_save()
        stats = await svc.stats()
        assert stats["pending_sessions"] == 0 and stats["flush_failures"] == 0
        assert 1 < stats["flushes"] < 1000
        assert len(await svc.sessions_of("user1")) == 10
        assert await svc.sessions_of("user0") == [], "every one of user0's sessions ended"
    return outcome


async def test_a_thousand_concurrent_tasks(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    store = GatedStore()
    kwargs: dict[str, Any] = {"batch_save_threshold": 50, "save_delay_seconds": 0.01}
    await a_thousand_users(AsyncSessionService(store=store, **kwargs))
    assert store.most_active == 1, "one flush at a time, never two"
    outcome = await a_thousand_users(AsyncSessionService(f"aiofile://{path}", **kwargs))
    with SessionService(path) as sync:
        for sid, attributes in outcome.items():
            session = sync.get_session(sid)
            assert (session and session.attributes) == attributes


async def test_the_store_is_never_written_twice_at_once() -> None:
    store = GatedStore()

    async def creator(k: int) -> list[str]:  # each write-through create waits for its write
        return [await svc.create_session(f"u{k}-{n}") for n in range(30)]

    async def save_often() -> list[str]:
        for _ in range(20):
            await svc.force_save()
        return []

    async with AsyncSessionService(store=store, save_delay_seconds=0) as svc:
        batches = await asyncio.gather(*(creator(k) for k in range(10)), save_often())
    created = [sid for batch in batches for sid in batch]
    assert len(created) == 300 and store.writes >= 10
    assert store.most_active == 1
    assert all([await store.inner.load(sid) is not None for sid in created])


# -- cancellation ------------------------------------------------------------------------


async def test_a_cancelled_caller_loses_nothing() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store, save_delay_seconds=3600) as svc:
        sid = await svc.create_session("alice", {"a": 1})
        store.gate.clear()
        saver = asyncio.create_task(svc.force_save())
        await store.started.wait()
        saver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saver
        store.gate.set()  # the flush the caller gave up on goes on
        assert await eventually(lambda: _true(store.writes == 1))
        assert await store.inner.load(sid) is not None
        assert (await svc.stats())["pending_sessions"] == 0


async def test_a_cancelled_flush_puts_its_batch_back() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store, save_delay_seconds=0.01,
                                   retry_initial_seconds=3600) as svc:
        store.gate.clear()
        ids = [await svc.create_session(f"u{n}", {"n": n}) for n in range(3)]
        await store.started.wait()  # the flusher task is mid-write
        flusher = next(t for t in asyncio.all_tasks() if t.get_name() == FLUSHER_NAME)
        flusher.cancel()
        await asyncio.wait({flusher})
        stats = await svc.stats()
        assert stats["pending_sessions"] == 3 and stats["flush_failures"] == 1
        assert "CancelledError" in stats["last_error"]
        store.gate.set()
        assert await svc.force_save() == 3  # the next call also restarted the flusher
        for sid in ids:
            assert await store.inner.load(sid) is not None
        assert [t for t in asyncio.all_tasks() if t.get_name() == FLUSHER_NAME and not t.done()]


async def test_shutdown_time_limit_cancels_a_hung_write_and_reports_it() -> None:
    store = GatedStore()
    svc = AsyncSessionService(store=store, save_delay_seconds=3600)
    ids = [await svc.create_session(f"u{n}") for n in range(3)]
    store.gate.clear()
    started = time.monotonic()
    report = await svc.shutdown(timeout=0.2)
    assert time.monotonic() - started < 2.0
    assert not report.complete and report.written == 0
    assert sorted(report.unsaved) == sorted(sid[:6] + "…" for sid in ids)
    assert report.error is not None and "time limit" in report.error
    assert (await svc.stats())["pending_sessions"] == 3, "kept, not dropped"


async def test_a_cancelled_wait_for_a_pool_slot_is_withdrawn() -> None:
    pool = SessionPoolConfig(max_total=2, max_wait=5.0)
    async with AsyncSessionService("memory://", pool=pool) as svc:
        first = await svc.create_session("a")
        await svc.create_session("b")
        waiter = asyncio.create_task(svc.create_session("c"))
        await asyncio.sleep(0.05)
        assert not waiter.done() and (await svc.stats())["pool"]["waiting"] == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (await svc.stats())["pool"]["waiting"] == 0
        assert await svc.end_session(first)
        assert await asyncio.wait_for(svc.create_session("d"), 1.0)


# -- waiting on the loop -------------------------------------------------------------------


async def test_a_full_pool_waits_without_blocking_the_loop() -> None:
    pool = SessionPoolConfig(max_total=2, max_wait=5.0)
    async with AsyncSessionService("memory://", pool=pool) as svc:
        first = await svc.create_session("a")
        await svc.create_session("b")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        beat = asyncio.create_task(ticker())
        third = asyncio.create_task(svc.create_session("c"))
        await asyncio.sleep(0.1)
        assert not third.done() and ticks >= 5
        assert await svc.end_session(first)
        assert await asyncio.wait_for(third, 1.0)
        beat.cancel()
    async with AsyncSessionService("memory://",
                                   pool=SessionPoolConfig(max_total=1, max_wait=0.05)) as svc:
        await svc.create_session("a")
        with pytest.raises(PoolExhaustedError):
            await svc.create_session("b")


async def test_back_pressure_waits_then_refuses_then_recovers() -> None:
    store = GatedStore()
    store.fail = StoreUnavailableError("store down")
    async with AsyncSessionService(
        store=store, max_pending_sessions=3, backpressure_timeout_seconds=0.2,
        retry_initial_seconds=0.02, retry_max_seconds=0.05, save_delay_seconds=0.01,
    ) as svc:
        ids = [await svc.create_session(f"u{n}") for n in range(3)]
        started = time.monotonic()
        with pytest.raises(BackPressureError, match="3 sessions are waiting"):
            await svc.create_session("one too many")
        assert time.monotonic() - started >= 0.19
        store.fail = None
        assert await asyncio.wait_for(svc.create_session("after"), 2.0)
        await svc.force_save()
        assert all([await store.inner.load(sid) is not None for sid in ids])


# -- stores ----------------------------------------------------------------------------------


def test_a_store_of_the_other_kind_is_refused() -> None:
    url, settings = StoreURL.parse("memory://"), Settings()
    with pytest.raises(ConfigError, match="MemoryStore is a blocking store"):
        AsyncSessionService(store=MemoryStore(url, settings))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="AsyncMemoryStore is an asyncio store"):
        SessionService(store=AsyncMemoryStore(url, settings))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a session store"):
        AsyncSessionService(store=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="aiofile:// is an asyncio store"):
        SessionService("aiofile:///tmp/never-opened.json")


async def test_pushed_invalidations_are_registered_on_first_use() -> None:
    store = WatchedStore()
    async with AsyncSessionService(store=store) as svc:
        sid = await svc.create_session("alice")
        await svc.force_save()
        assert store.watcher is not None
        assert svc._engine.pending.prompt_ends, "ends are flushed at once for other servers"
        store.watcher([sid], True)  # another server ended it
        result = await svc.validate_session(sid)
        assert not result and result.reason is Reason.NOT_FOUND


def test_one_service_runs_on_one_event_loop(tmp_path: Path) -> None:
    svc = AsyncSessionService(f"aiofile://{tmp_path / 's.json'}", save_delay_seconds=3600)
    sid = asyncio.run(svc.create_session("alice"))
    with pytest.raises(SessionError, match="event loop that first used it"):
        asyncio.run(svc.validate_session(sid))
    report = asyncio.run(svc.shutdown())  # shutdown itself may run on another loop
    assert report.complete and report.written == 1
    with SessionService(tmp_path / "s.json") as sync:
        assert sync.get_session(sid) is not None


def test_pending_changes_are_written_at_interpreter_exit(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    script = textwrap.dedent("""
        import asyncio, sys
        from pooled_sessions import AsyncSessionService
        svc = AsyncSessionService(sys.argv[1], save_delay_seconds=3600)
        print(asyncio.run(svc.create_session("alice", {"kept": True})))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, f"aiofile://{path}"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    sid = done.stdout.strip()
    with SessionService(path) as sync:
        session = sync.get_session(sid)
        assert session is not None and session.attributes == {"kept": True}


@pytest.mark.redis
async def test_an_end_on_one_server_is_refused_by_another_at_once(redis_url: str) -> None:
    async with AsyncSessionService(redis_url) as one, AsyncSessionService(redis_url) as two:
        sid = await one.create_session("alice")
        await one.force_save()
        assert await two.validate_session(sid)
        assert await one.end_session(sid)
        assert await eventually(lambda: _not_valid(two, sid), timeout=2.0)


async def _not_valid(svc: AsyncSessionService, sid: str) -> bool:
    return not await svc.validate_session(sid)
