"""Commit on return (the default): a change is in the store when its call returns, calls of
many threads or tasks share one write, a write that fails changes nothing, an end is never
reported done unless it is written, and write-behind warns when another process writes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from pooled_sessions import (
    AsyncSessionService,
    Reason,
    SessionService,
    StoreUnavailableError,
)
from pooled_sessions.adapters import Store, open_store
from pooled_sessions.adapters.file import fsio
from pooled_sessions.adapters.memory import MemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Operation, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.service import SHUTDOWN_THREAD
from tests.aiokit import GatedStore, eventually, holds
from tests.backends import ServiceAPI, ServiceFactory
from tests.redis_servers import RedisServer, unique_prefix
from tests.waiting import wait_until

THREADS, STEPS = 16, 12


def reader_of(svc: ServiceAPI) -> Store:
    """A blocking store of its own on ``svc``'s store: what any other process would read."""
    service: Any = getattr(svc, "service", svc)  # an asyncio service behind its facade
    url = str(service.settings.backend).replace("aiofile://", "file://")
    return open_store(url, service.settings)


# -- group commit ------------------------------------------------------------------------------


@pytest.mark.backends("file", "aiofile", "redis", "cluster")
def test_sixteen_threads_share_writes_and_every_change_is_stored_when_its_call_returns(
    make_service: ServiceFactory,
) -> None:
    svc = make_service()
    reader = reader_of(svc)
    ids = [svc.create_session(f"user{n}", {"step": 0}) for n in range(THREADS)]
    writes_before = svc.stats()["store_writes"]
    start = threading.Barrier(THREADS)
    problems: list[str] = []

    def worker(n: int) -> None:
        start.wait()
        for step in range(1, STEPS + 1):
            if not svc.update_session(ids[n], {"step": step, f"by{n}": step}):
                problems.append(f"thread {n}: update {step} refused")
            record = reader.load(ids[n])
            if record is None or record["attributes"]["step"] != step:
                problems.append(f"thread {n}: update {step} not stored when it returned")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    reader.close()
    assert problems == []
    writes = svc.stats()["store_writes"] - writes_before
    calls = THREADS * STEPS
    assert writes < calls, f"{writes} store writes for {calls} calls: none were shared"
    print(f"{calls} calls from {THREADS} threads, {writes} store writes")


class HeldWrites(MemoryStore):
    """A memory store whose writes can be held at a gate (a thread's `GatedStore`)."""

    def __init__(self) -> None:
        super().__init__(StoreURL.parse("memory://"), Settings())
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()
        self.writes = 0

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        self.started.set()
        self.gate.wait(30)
        self.writes += 1
        return super().write(operations, now)


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """A real signal to this (main) thread after ``seconds``, raising KeyboardInterrupt where
    it waits, as Ctrl-C does (a signal wakes a blocked lock; `interrupt_main` would not)."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.get_ident()
    previous = signal.signal(signal.SIGUSR1, raise_interrupt)
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)


def test_threads_arriving_during_a_write_share_the_next_and_a_leaver_leaves_no_gate() -> None:
    store = HeldWrites()
    with SessionService(store=store) as svc:
        ids = [svc.create_session(f"u{n}") for n in range(THREADS + 1)]
        before = store.writes
        store.gate.clear()
        store.started.clear()
        first = threading.Thread(target=svc.update_session, args=(ids[0], {"x": 1}))
        first.start()
        assert store.started.wait(10), "the first caller leads a write, held at the gate"
        done: list[bool] = []
        late = [
            threading.Thread(target=lambda sid=sid: done.append(svc.update_session(sid, {"x": 2})))
            for sid in ids[1:THREADS]
        ]
        for thread in late:
            thread.start()
        assert wait_until(lambda: len(svc._turns) == THREADS - 1, 10), "each asleep at its gate"
        with interrupted_after(0.05), pytest.raises(KeyboardInterrupt):  # Ctrl-C while it waits
            svc.update_session(ids[THREADS], {"x": 3})
        assert len(svc._turns) == THREADS - 1, "the caller that left took its gate with it"
        store.gate.set()
        for thread in [first, *late]:
            thread.join(10)
        assert done == [True] * (THREADS - 1)
        assert store.writes - before == 2, "the write in flight, then one for all who came"
        assert svc._turns == {}
        assert svc.update_session(ids[0], {"x": 4}), "the service goes on after the leaver"
        for n, sid in enumerate(ids):
            record = store.load(sid)
            expected = 4 if n == 0 else 3 if n == THREADS else 2
            assert record is not None and record["attributes"] == {"x": expected}


async def test_tasks_that_arrive_during_a_write_share_the_next_one() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store) as svc:
        ids = [await svc.create_session(f"u{n}") for n in range(100)]
        before = store.writes
        store.gate.clear()
        store.started.clear()
        early = [asyncio.create_task(svc.update_session(sid, {"x": 1})) for sid in ids[:50]]
        await store.started.wait()  # one write holds the first fifty, held at the gate
        late = [asyncio.create_task(svc.update_session(sid, {"x": 2})) for sid in ids[50:]]
        await asyncio.sleep(0.01)  # the fifty others mark their changes and wait
        assert not any(call.done() for call in early + late)
        store.gate.set()
        assert all(await asyncio.gather(*early, *late))
        assert store.writes - before == 2, "the write in flight, then one for all who came"
        assert store.most_active == 1, "never two writes at once"
        for n, sid in enumerate(ids):
            record = await store.inner.load(sid)
            assert record is not None and record["attributes"] == {"x": 1 if n < 50 else 2}


async def test_a_cancelled_caller_stops_waiting_and_its_write_goes_on() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store) as svc:
        sid = await svc.create_session("alice", {"a": 1})
        store.gate.clear()
        store.started.clear()
        caller = asyncio.create_task(svc.update_session(sid, {"a": 2}))
        await store.started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        store.gate.set()
        assert await eventually(lambda: holds(store.writes == 2))
        record = await store.inner.load(sid)
        assert record is not None and record["attributes"] == {"a": 2}


# -- a write that fails changes nothing ------------------------------------------------------


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fsio, "write_all", refuse)


def test_a_change_the_disk_refuses_raises_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(path, retry_initial_seconds=0.02, retry_max_seconds=0.05) as svc:
        cart = svc.create_session("alice", {"cart": [1]})
        logout = svc.create_session("bob")
        saved = path.read_bytes()
        with pytest.MonkeyPatch.context() as patch:
            disk_full(patch)
            with pytest.raises(StoreUnavailableError, match=f"{path}.*disk full"):
                svc.update_session(cart, {"cart": [1, 2]})
            with pytest.raises(StoreUnavailableError, match="disk full"):
                svc.create_session("carol")
            with pytest.raises(StoreUnavailableError, match="disk full"):
                svc.rotate_session(cart)
            with pytest.raises(StoreUnavailableError, match="disk full"):
                svc.end_session(logout)
            result = svc.validate_session(cart)
            assert result and result.session is not None
            assert result.session.attributes == {"cart": [1]}, "as it was before the call"
            assert svc.sessions_of("alice") == [cart] and svc.sessions_of("carol") == []
            assert svc.validate_session(logout).reason is Reason.NOT_FOUND, "refused at once"
            stats = svc.stats()
            assert stats["store_ok"] is False and "disk full" in stats["last_error"]
            assert stats["unwritten_ends"] == 1 and stats["pending_sessions"] == 1
            assert path.read_bytes() == saved
        assert wait_until(lambda: svc.stats()["unwritten_ends"] == 0), "the end is retried"
        assert svc.stats()["store_ok"] is True
    with SessionService(path) as fresh:
        session = fresh.get_session(cart)
        assert session is not None and session.attributes == {"cart": [1]}
        assert fresh.get_session(logout) is None and fresh.sessions_of("carol") == []


def test_shutdown_reports_an_end_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    svc = SessionService(path)
    sid = svc.create_session("alice")
    with pytest.MonkeyPatch.context() as patch:
        disk_full(patch)
        with pytest.raises(StoreUnavailableError):
            svc.end_session(sid)
        report = svc.shutdown(timeout=0.2)
        for thread in threading.enumerate():  # a last write it gave up on ends on a full disk
            if thread.name == SHUTDOWN_THREAD:
                thread.join(5)
    assert not report.complete
    assert report.unwritten_ends == (sid[:8] + "…",) and report.unsaved == report.unwritten_ends
    with SessionService(path) as fresh:
        assert fresh.validate_session(sid), "lost with the process: valid until it expires"


async def test_an_asyncio_change_the_store_refuses_changes_nothing() -> None:
    store = GatedStore()
    async with AsyncSessionService(store=store) as svc:
        sid = await svc.create_session("alice", {"a": 1})
        store.fail = StoreUnavailableError("store down")
        with pytest.raises(StoreUnavailableError, match="store down"):
            await svc.update_session(sid, {"a": 2})
        with pytest.raises(StoreUnavailableError, match="store down"):
            await svc.create_session("bob")
        session = await svc.get_session(sid)
        assert session is not None and session.attributes == {"a": 1}
        assert await svc.sessions_of("bob") == []
        with pytest.raises(StoreUnavailableError, match="store down"):
            await svc.end_session(sid)
        assert not await svc.validate_session(sid)
        assert (await svc.stats())["unwritten_ends"] == 1
        store.fail = None
        await svc.force_save()
        assert await store.inner.load(sid) is None
        assert (await svc.stats())["unwritten_ends"] == 0


def test_a_change_to_a_session_gone_from_redis_returns_false(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    with SessionService(url) as svc:
        sid = svc.create_session("alice", {"a": 1})
        assert svc.validate_session(sid)  # cached here
        gone = redis.Redis.from_url(redis_server.url).delete(
            cast(Any, svc._store).keys.session(sid)
        )
        assert gone == 1  # evicted or purged, with no event: only the write can tell
        assert svc.update_session(sid, {"a": 2}) is False
        assert not svc.validate_session(sid)
        assert svc.rotate_session(sid) is None
    with SessionService(url) as peer:
        assert peer.get_session(sid) is None


async def test_an_asyncio_change_to_a_session_gone_from_redis_returns_false(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    async with AsyncSessionService(url) as svc:
        sid = await svc.create_session("alice", {"a": 1})
        assert (
            redis.Redis.from_url(redis_server.url).delete(cast(Any, svc._store).keys.session(sid))
            == 1
        )
        assert await svc.update_session(sid, {"a": 2}) is False
        assert await svc.get_session(sid) is None


# -- write-behind: one process per store -------------------------------------------------------


def test_write_behind_warns_once_when_another_process_writes_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.json"
    with (
        SessionService(path, write_behind=True, sync_interval_seconds=0.01) as behind,
        SessionService(path) as other,
    ):
        behind.create_session("alice")
        behind.force_save()
        with caplog.at_level(logging.WARNING, logger="session_service"):
            for n in range(3):
                other.create_session(f"user{n}")
                assert wait_until(lambda: "write_behind=True" in caplog.text)
    warnings = [r for r in caplog.records if "write_behind" in r.getMessage()]
    assert len(warnings) == 1, "said once"
    assert "POOLED_SESSIONS_WRITE_BEHIND" in warnings[0].getMessage()


def test_committing_services_sharing_a_file_do_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.json"
    with caplog.at_level(logging.WARNING, logger="session_service"):
        with SessionService(path) as one, SessionService(path) as two:
            sid = one.create_session("alice", {"n": 1})
            assert two.update_session(sid, {"n": 2})
            session = one.get_session(sid)
            assert session is not None and session.attributes == {"n": 2}, "seen at once"
    assert "write_behind" not in caplog.text


@pytest.mark.redis
def test_write_behind_warns_when_another_server_writes_redis(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with SessionService(redis_url, write_behind=True) as behind, SessionService(redis_url) as other:
        with caplog.at_level(logging.WARNING, logger="session_service"):
            sid = other.create_session("alice")
            assert behind.validate_session(sid)
            assert other.end_session(sid)
            assert wait_until(lambda: "write_behind=True" in caplog.text)


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_cached_validate_on_a_shared_file_asks_the_file_then_skips_the_flow(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path first asks the file whether another process wrote it (its fstat): no
    flow for a cached session while nothing changed, and an end written elsewhere is
    refused at the next call all the same."""
    path = tmp_path / "sessions.json"
    other = SessionService(path)
    sid = other.create_session("alice")
    flows: list[str] = []

    def counted(service: Any) -> None:
        drive = service._drive

        def counting(flow: Any) -> Any:
            flows.append(flow.__name__)
            return drive(flow)

        monkeypatch.setattr(service, "_drive", counting)

    if kind == "blocking":
        with SessionService(path) as svc:
            assert svc.validate_session(sid)
            counted(svc)
            assert all(svc.validate_session(sid) for _ in range(5)) and flows == []
            assert other.end_session(sid)
            assert svc.validate_session(sid).reason is Reason.NOT_FOUND
    else:

        async def main() -> None:
            async with AsyncSessionService(f"aiofile://{path}") as svc:
                assert await svc.validate_session(sid)
                counted(svc)
                assert all([await svc.validate_session(sid) for _ in range(5)]) and flows == []
                assert other.end_session(sid)
                assert (await svc.validate_session(sid)).reason is Reason.NOT_FOUND

        asyncio.run(main())
    other.shutdown()
