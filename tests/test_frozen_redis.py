"""Shutdown keeps its time limit when Redis stops answering (its process SIGSTOPped).

The final write is left to finish on its own (the blocking service: a thread; the asyncio
one: a cancelled task) and its session is reported unsaved. After SIGCONT the session is in
Redis whole or not at all: each session is written by one atomic script call.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import AsyncSessionService, SessionService, Settings
from pooled_sessions.adapters.redis import RedisStore
from pooled_sessions.service import SHUTDOWN_THREAD
from tests.redis_servers import RedisServer, unique_prefix
from tests.waiting import wait_until

pytestmark = pytest.mark.redis
LIMIT, SLACK = 2.0, 0.5
ATTRIBUTES = {"cart": [3, 7], "note": "x" * 200}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: SIGSTOP would stall every test sharing one."""
    started = RedisServer(tmp_path / "frozen").start()
    yield started
    if started.process is not None:
        started.process.send_signal(signal.SIGCONT)
    started.stop()


def freeze(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def thaw(server: RedisServer) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)


def stored(url: str, sid: str) -> dict[str, Any] | None:
    """The session as Redis holds it now, read by a store of its own."""
    store = RedisStore(url, Settings())
    try:
        record = store.load(sid)
    finally:
        store.close()
    return None if record is None else dict(record)


def assert_whole_or_absent(record: dict[str, Any] | None, username: str) -> None:
    if record is not None:
        assert record["username"] == username and record["attributes"] == ATTRIBUTES


def shutdown_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == SHUTDOWN_THREAD]


def test_shutdown_keeps_its_limit_against_a_frozen_redis(server: RedisServer) -> None:
    url = f"{server.url}?prefix={unique_prefix()}"
    svc = SessionService(url, write_behind=True, save_delay_seconds=3600)
    sid = svc.create_session("alice", ATTRIBUTES)
    freeze(server)
    started = time.monotonic()
    report = svc.shutdown(timeout=LIMIT)
    took = time.monotonic() - started
    thaw(server)
    assert took < LIMIT + SLACK, f"shutdown took {took:.1f} s"
    assert report.unsaved == (sid[:8] + "…",) and report.written == 0
    assert report.error is not None and "time limit" in report.error
    assert wait_until(lambda: not shutdown_threads(), 10), "the left write ends after SIGCONT"
    record = stored(url, sid)
    assert record is not None, "the write that was left finished once Redis answered"
    assert_whole_or_absent(record, "alice")


def test_a_flusher_write_hanging_at_shutdown_is_reported_unsaved(server: RedisServer) -> None:
    url = f"{server.url}?prefix={unique_prefix()}"
    svc = SessionService(url, write_behind=True, save_delay_seconds=3600, batch_save_threshold=2)
    first = svc.create_session("alice", ATTRIBUTES)
    freeze(server)
    second = svc.create_session("bob", ATTRIBUTES)  # a full batch: the flusher writes, hangs
    assert wait_until(lambda: svc.stats()["inflight_sessions"] == 2, 5), "the write hangs"
    third = svc.create_session("carol", ATTRIBUTES)  # pending behind it
    started = time.monotonic()
    report = svc.shutdown(timeout=LIMIT)
    took = time.monotonic() - started
    thaw(server)
    assert took < LIMIT + SLACK, f"shutdown took {took:.1f} s"
    assert sorted(report.unsaved) == sorted(s[:8] + "…" for s in (first, second, third))
    assert wait_until(lambda: not shutdown_threads(), 15)
    for sid, user in ((first, "alice"), (second, "bob"), (third, "carol")):
        assert_whole_or_absent(stored(url, sid), user)


async def test_the_async_shutdown_keeps_its_limit_against_a_frozen_redis(
    server: RedisServer,
) -> None:
    url = f"{server.url}?prefix={unique_prefix()}"
    svc = AsyncSessionService(url, write_behind=True, save_delay_seconds=3600)
    sid = await svc.create_session("alice", ATTRIBUTES)
    freeze(server)
    started = time.monotonic()
    report = await svc.shutdown(timeout=LIMIT)
    took = time.monotonic() - started
    thaw(server)
    assert took < LIMIT + SLACK, f"shutdown took {took:.1f} s"
    assert report.unsaved == (sid[:8] + "…",) and report.written == 0
    assert report.error is not None and "time limit" in report.error
    assert_whole_or_absent(stored(url, sid), "alice")
