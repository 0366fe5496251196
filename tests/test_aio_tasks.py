"""AsyncSessionService under many tasks: one flush at a time, cancellation that loses
nothing, and waits (pool slot, room in the pending buffer) that never block the loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import (
    AsyncSessionService,
    BackPressureError,
    PoolExhaustedError,
    SessionPoolConfig,
    SessionService,
    StoreUnavailableError,
)
from pooled_sessions.service_async import FLUSHER_NAME
from tests.aiokit import GatedStore, eventually, holds

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
    async with AsyncSessionService(store=store, write_behind=True, save_delay_seconds=3600) as svc:
        sid = await svc.create_session("alice", {"a": 1})
        store.gate.clear()
        saver = asyncio.create_task(svc.force_save())
        await store.started.wait()
        saver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saver
        store.gate.set()  # the flush the caller gave up on goes on
        assert await eventually(lambda: holds(store.writes == 1))
        assert await store.inner.load(sid) is not None
        assert (await svc.stats())["pending_sessions"] == 0


async def test_a_cancelled_flush_puts_its_batch_back() -> None:
    store = GatedStore()
    async with AsyncSessionService(
        store=store, write_behind=True, save_delay_seconds=0.01, retry_initial_seconds=3600
    ) as svc:
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
    svc = AsyncSessionService(store=store, write_behind=True, save_delay_seconds=3600)
    ids = [await svc.create_session(f"u{n}") for n in range(3)]
    store.gate.clear()
    started = time.monotonic()
    report = await svc.shutdown(timeout=0.1)
    assert time.monotonic() - started < 2.0
    assert not report.complete and report.written == 0
    assert sorted(report.unsaved) == sorted(sid[:8] + "…" for sid in ids)
    assert report.error is not None and "time limit" in report.error
    assert (await svc.stats())["pending_sessions"] == 3, "kept, not dropped"


async def test_a_cancelled_wait_for_a_pool_slot_is_withdrawn() -> None:
    pool = SessionPoolConfig(max_total=2, max_wait=5.0)
    async with AsyncSessionService("memory://", pool=pool) as svc:
        first = await svc.create_session("a")
        await svc.create_session("b")
        waiter = asyncio.create_task(svc.create_session("c"))

        async def queued() -> bool:
            return bool((await svc.stats())["pool"]["waiting"] == 1)

        assert await eventually(queued) and not waiter.done()
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
    async with AsyncSessionService(
        "memory://", pool=SessionPoolConfig(max_total=1, max_wait=0.05)
    ) as svc:
        await svc.create_session("a")
        with pytest.raises(PoolExhaustedError):
            await svc.create_session("b")


async def test_back_pressure_waits_then_refuses_then_recovers() -> None:
    store = GatedStore()
    store.fail = StoreUnavailableError("store down")
    async with AsyncSessionService(
        store=store,
        write_behind=True,
        max_pending_sessions=3,
        backpressure_timeout_seconds=0.1,
        retry_initial_seconds=0.02,
        retry_max_seconds=0.05,
        save_delay_seconds=0.01,
    ) as svc:
        ids = [await svc.create_session(f"u{n}") for n in range(3)]
        started = time.monotonic()
        with pytest.raises(BackPressureError, match="3 sessions are waiting"):
            await svc.create_session("one too many")
        assert time.monotonic() - started >= 0.09
        store.fail = None
        assert await asyncio.wait_for(svc.create_session("after"), 2.0)
        await svc.force_save()
        assert all([await store.inner.load(sid) is not None for sid in ids])
