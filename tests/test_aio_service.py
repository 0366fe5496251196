"""AsyncSessionService: the API as coroutines, the flusher task, stores, loops, exit.

The conformance suite (tests/test_conformance.py) also runs on this service through a
synchronous facade (tests/aio_backends.py); tests/test_aio_tasks.py covers many tasks,
cancellation and waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pooled_sessions import (
    AsyncSessionService,
    ConfigError,
    IdInUseError,
    Reason,
    ServiceClosedError,
    SessionError,
    SessionService,
    Settings,
    StoreUnavailableError,
)
from pooled_sessions.adapters.memory import AsyncMemoryStore, MemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.clock import FastForwardClock
from tests.aiokit import GatedStore, WatchedStore, eventually, holds

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["memory", "aiofile"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"aiofile://{tmp_path / 's.json'}"


# -- the API -------------------------------------------------------------------------------


def test_every_method_of_the_sync_service_is_a_coroutine_with_its_signature() -> None:
    public = [n for n in dir(SessionService) if not n.startswith("_")]
    names = {n for n in public if callable(getattr(SessionService, n))}
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
    behind = AsyncSessionService(redis_url, write_behind=True)  # its changes wait for a flush
    async with behind as one, AsyncSessionService(redis_url) as two:
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
        assert await svc.force_save() == 0, "each change was committed before its call returned"
        assert await svc.async_force_save() == 0
        stats = await svc.stats()
        assert stats["pending_changes"] == 0 and stats["flushes"] >= 5
        assert stats["live_sessions"] == 1 and stats["closed"] is False
        assert (await svc.validate_session("not an id")).reason is Reason.INVALID_ID
        with pytest.raises(IdInUseError, match="already in use"):
            await svc.create_session("bob", session_id=new)
    assert (await svc.stats())["closed"] is True
    async with AsyncSessionService(url) as again:
        if url.startswith("aiofile"):
            kept = await again.get_session(new)
            assert kept is not None and kept.attributes == {"cart": [3, 7]}


async def test_shutdown_is_idempotent_and_closes_the_service(url: str) -> None:
    svc = AsyncSessionService(url, write_behind=True, save_delay_seconds=3600)
    sid = await svc.create_session("alice")
    first, second = await asyncio.gather(svc.shutdown(), svc.shutdown())
    assert first.complete and first.written == 1
    assert second.complete and second.written == 0
    assert (await svc.shutdown()).written == 0
    with pytest.raises(ServiceClosedError):
        await svc.validate_session(sid)
    with pytest.raises(ServiceClosedError):
        await svc.force_save()


async def test_changes_are_written_behind_by_the_flusher_task(clock: FastForwardClock) -> None:
    store = GatedStore()
    async with AsyncSessionService(
        store=store, write_behind=True, batch_save_threshold=1000, clock=clock
    ) as svc:
        ids = [await svc.create_session(f"u{n}") for n in range(20)]
        assert store.writes == 0, "nothing is written per change"
        clock.advance(svc.settings.save_delay_seconds)
        assert await eventually(lambda: holds(store.writes == 1))
        assert all([await store.inner.load(sid) is not None for sid in ids])
        for n in range(1000):
            await svc.update_session(ids[0], {"n": n})
        assert await eventually(lambda: holds(store.writes == 2)), "the threshold flushes"
        assert (await svc.stats())["writes_saved"] >= 999


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
    url = f"aiofile://{tmp_path / 's.json'}"
    svc = AsyncSessionService(url, write_behind=True, save_delay_seconds=3600)
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
        svc = AsyncSessionService(sys.argv[1], write_behind=True, save_delay_seconds=3600)
        print(asyncio.run(svc.create_session("alice", {"kept": True})))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, f"aiofile://{path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
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
