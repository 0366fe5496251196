"""The services' clock: real time by default; a test's clock skips ahead and wakes the flusher."""

from __future__ import annotations

import asyncio
import time

import pytest

from pooled_sessions import AsyncSessionService, Reason, SessionService
from pooled_sessions.clock import REAL_TIME, Clock, FastForwardClock
from tests.aiokit import eventually
from tests.waiting import wait_until


def test_real_time_never_jumps() -> None:
    clock = Clock()
    assert abs(clock.time() - time.time()) < 1.0
    assert abs(clock.monotonic() - time.monotonic()) < 1.0
    REAL_TIME.watch(lambda: None)()  # nothing to wake, nothing to stop


def test_advance_moves_both_readings_and_wakes_the_watchers() -> None:
    clock = FastForwardClock()
    woken: list[str] = []
    stop = clock.watch(lambda: woken.append("jumped"))
    wall, mono = clock.time(), clock.monotonic()
    clock.advance(3600)
    assert 3600 <= clock.time() - wall < 3601 and 3600 <= clock.monotonic() - mono < 3601
    assert woken == ["jumped"]
    stop()
    clock.advance(1)
    assert woken == ["jumped"], "a watcher that stopped is not woken"
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)


def test_the_service_reads_its_clock(clock: FastForwardClock) -> None:
    clock.advance(86_400)
    with SessionService("memory://", expire_minutes=1, clock=clock) as svc:
        session = svc.get_session(svc.create_session("alice"))
        assert session is not None
        assert session.created_at == pytest.approx(clock.time(), abs=1.0)
        clock.advance(61)
        assert svc.validate_session(session.session_id).reason is Reason.EXPIRED


def test_a_skipped_save_delay_and_cleanup_interval_run_at_once(clock: FastForwardClock) -> None:
    with SessionService(
        "memory://", write_behind=True, save_delay_seconds=3600, clock=clock
    ) as svc:
        svc.create_session("alice")
        started = time.monotonic()
        clock.advance(3600)
        assert wait_until(lambda: svc.stats()["flushes"] == 1)
        clock.advance(svc.settings.cleanup_interval_minutes * 60)
        assert wait_until(lambda: svc.stats()["last_cleanup_at"] is not None)
        assert time.monotonic() - started < 2.0, "nothing waited for the hour it skipped"


async def test_a_skipped_save_delay_wakes_the_flusher_task(clock: FastForwardClock) -> None:
    async with AsyncSessionService(
        "memory://", write_behind=True, save_delay_seconds=3600, clock=clock
    ) as svc:
        await svc.create_session("alice")
        clock.advance(3600)

        async def flushed() -> bool:
            return bool((await svc.stats())["flushes"] == 1)

        assert await eventually(flushed)
    clock.advance(1)  # the service stopped watching the clock at shutdown


def test_a_clock_jump_reaches_a_service_on_another_thread(clock: FastForwardClock) -> None:
    async def scenario() -> None:
        async with AsyncSessionService(
            "memory://", write_behind=True, save_delay_seconds=3600, clock=clock
        ) as svc:
            await svc.create_session("alice")
            await asyncio.to_thread(clock.advance, 3600)  # from a thread, not the loop

            async def flushed() -> bool:
                return bool((await svc.stats())["flushes"] == 1)

            assert await eventually(flushed)

    asyncio.run(scenario())
