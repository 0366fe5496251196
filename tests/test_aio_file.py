"""The aiofile store: the sync JSON store's file and guarantees, without blocking the loop.

Real files in a temporary directory, real child processes for the lock and for kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import (
    AsyncSessionService,
    CorruptStoreError,
    MissingDependencyError,
    SessionService,
    StoreUnavailableError,
)
from pooled_sessions.adapters.file import fsio
from pooled_sessions.adapters.file import store_async as aiofile
from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.file.store_async import AioFileStore
from pooled_sessions.adapters.record_table import RecordTable
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Delete, Operation, decode_document
from pooled_sessions.config import Settings
from pooled_sessions.tools.migrate import upsert_of
from tests.filekit import journal_of, mode_of, stored, temp_files
from tests.storekit import make_record, session_id

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Settings()


def aio_store(path: Path) -> AioFileStore:
    return AioFileStore(StoreURL.parse(f"aiofile://{path}"), SETTINGS)


def sync_store(path: Path) -> JsonFileStore:
    return JsonFileStore(StoreURL.parse(str(path)), SETTINGS)


def upserts(first: int, count: int) -> list[Operation]:
    now = time.time()
    return [upsert_of(session_id(n), make_record(n, now)) for n in range(first, first + count)]


class Ticker:
    """Counts turns of the event loop while it runs (a blocked loop counts none)."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.001)

    def stop(self) -> int:
        self._task.cancel()
        return self.ticks


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


# -- one file for both stores -------------------------------------------------------------


async def test_a_file_round_trip_between_the_sync_and_the_async_service(path: Path) -> None:
    with SessionService(path) as sync:
        kept = sync.create_session("zoë", {"cart": [1, {"sku": "A-1"}], "note": '✓ "q"'})
        ended = sync.create_session("bob", {"n": 1})
        assert sync.end_session(ended)
    async with AsyncSessionService(f"aiofile://{path}") as svc:
        session = await svc.get_session(kept)
        assert session is not None and session.username == "zoë"
        assert session.attributes == {"cart": [1, {"sku": "A-1"}], "note": '✓ "q"'}
        assert not await svc.validate_session(ended), "the tombstone is read"
        assert await svc.update_session(kept, {"seen": "async"})
        made = await svc.create_session("carol", {"from": "async"})
    decode_document(path.read_bytes(), str(path))  # the async store wrote the same format
    with SessionService(path) as sync:
        again = sync.get_session(kept)
        assert again is not None and again.attributes["seen"] == "async"
        created = sync.get_session(made)
        assert created is not None and created.attributes == {"from": "async"}
        assert sync.get_session(ended) is None


async def test_both_stores_read_the_same_records(path: Path) -> None:
    sync = sync_store(path)
    sync.write(upserts(0, 3000) + [Delete(session_id(7), "user-1", time.time())], time.time())
    store = aio_store(path)
    assert [pair async for pair in store.scan()] == list(sync.scan())
    assert await store.count() == sync.count() == 2999
    assert await store.load_user("user-1") == sync.load_user("user-1")
    assert await store.load(session_id(7)) is None
    # written by hand, pretty-printed: the step-by-step parse reads it like the sync one
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=2))
    assert [pair async for pair in aio_store(path).scan()] == list(sync_store(path).scan())


async def test_writes_append_and_snapshots_are_replaced_atomically(path: Path) -> None:
    store = aio_store(path)
    await store.write(upserts(0, 10), time.time())  # a new store's first write: its snapshot
    first, snapshot = os.stat(path).st_ino, path.read_bytes()
    await store.write(upserts(10, 10), time.time())
    assert path.read_bytes() == snapshot and stored(path).lines == 1, "appended"
    assert await store.compact()
    assert os.stat(path).st_ino != first, "replaced by rename, never rewritten in place"
    for name in (path, Path(f"{path}.lock"), journal_of(path)):
        assert mode_of(name) == 0o600
    assert temp_files(path.parent) == []
    assert len(decode_document(path.read_bytes(), "")[0]) == 20 and stored(path).lines == 0


async def test_temp_files_of_a_crashed_writer_are_removed_on_first_use(path: Path) -> None:
    sync_store(path).write(upserts(0, 2), time.time())
    stray = path.parent / f".{path.name}.crashed.tmp"
    stray.write_text('{"half": ')
    store = aio_store(path)
    assert stray.exists(), "nothing is touched before the first use"
    assert await store.count() == 2
    assert not stray.exists()


async def test_a_change_by_another_process_is_noticed(path: Path) -> None:
    store, other = aio_store(path), aio_store(path)
    await store.write(upserts(0, 2), time.time())  # this store's first use: a write
    await other.write([Delete(session_id(0), "user-0", time.time())], time.time())
    assert await store.poll(), "its first poll sees what the other wrote since"
    assert not await store.poll()
    assert await store.load(session_id(0)) is None
    await other.write(upserts(5, 1), time.time())
    assert await store.poll()


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": "pooled_sessions", "vers',
        b"\xff\xfe garbage",
        b'{"format":"pooled_sessions","version":99}',
    ],
)
async def test_a_corrupt_file_is_refused_and_left_as_it_is(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    store = aio_store(path)
    with pytest.raises(CorruptStoreError):
        await store.load(session_id(1))
    with pytest.raises(CorruptStoreError):
        await store.write(upserts(0, 1), time.time())
    async with AsyncSessionService(f"aiofile://{path}") as svc:
        with pytest.raises(CorruptStoreError):
            await svc.get_session(session_id(1))
        with pytest.raises(CorruptStoreError):  # refused at the call: nothing is kept
            await svc.create_session("alice")
        assert (await svc.stats())["live_sessions"] == 0
    async with AsyncSessionService(f"aiofile://{path}", write_behind=True) as svc:
        await svc.create_session("alice")
        report = await svc.shutdown(timeout=0.1)
        assert not report.complete and "CorruptStoreError" in str(report.error)
    assert path.read_bytes() == content


def test_without_aiofiles_the_error_says_what_to_install(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "aiofiles.os", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "pooled-sessions\[aiofiles\]"'):
        AsyncSessionService(f"aiofile://{path}")


# -- never blocking the loop -------------------------------------------------------------


async def test_a_lock_held_elsewhere_is_waited_for_while_the_loop_runs(path: Path) -> None:
    store = aio_store(path)
    await store.count()
    held, release = threading.Event(), threading.Event()

    def other_holder() -> None:  # another open file description: as good as another process
        with fsio.locked(str(path)):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=other_holder)
    holder.start()
    held.wait(5)
    ticker = Ticker()
    write = asyncio.create_task(store.write(upserts(0, 5), time.time()))
    while ticker.ticks < 20 and not write.done():  # the loop keeps running meanwhile
        await asyncio.sleep(0.005)
    assert not write.done(), "the write waits for the lock"
    assert ticker.stop() >= 20
    release.set()
    await asyncio.wait_for(write, 5)
    holder.join(5)
    assert sync_store(path).count() == 5


async def test_a_large_write_and_a_large_reload_give_the_loop_turns(path: Path) -> None:
    store = aio_store(path)
    await store.count()
    ticker = Ticker()
    await store.write(upserts(0, 10_000), time.time())
    assert ticker.stop() >= 3, "merging and encoding 10,000 sessions is done in slices"
    other = sync_store(path)  # another process appends, then compacts
    other.write(upserts(10_000, 1), time.time())
    assert await store.poll() and await store.count() == 10_001, "one line applied"
    other.write(upserts(10_001, 1), time.time())
    assert other.compact()
    ticker = Ticker()
    assert await store.poll()
    assert ticker.stop() >= 3, "so is parsing a new snapshot"
    assert await store.count() == 10_002


# -- cancellation and failure ----------------------------------------------------------------


async def test_a_write_cancelled_in_its_file_step_waits_for_the_thread(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = aio_store(path)
    await store.write(upserts(0, 3), time.time())
    entered, release = threading.Event(), threading.Event()
    real = fsio.append

    def slow_append(*args: Any) -> fsio.Appended:
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(fsio, "append", slow_append)
    first = asyncio.create_task(store.write(upserts(3, 3), time.time()))
    while not entered.is_set():
        await asyncio.sleep(0.005)
    first.cancel()
    second = asyncio.create_task(store.write(upserts(6, 3), time.time()))
    await asyncio.sleep(0.1)
    assert not first.done(), "a cancel waits until the append under way has finished"
    assert not second.done(), "and keeps the lock meanwhile"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert temp_files(path.parent) == []
    assert sync_store(path).count() == 9  # the cancelled batch was written; resending is harmless


async def test_a_write_cancelled_between_slices_leaves_the_file_as_it_was(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = aio_store(path)
    await store.write(upserts(0, 3), time.time())
    saved = path.read_bytes(), journal_of(path).read_bytes()
    applied = 0
    real_apply = RecordTable.apply

    def counting_apply(table: RecordTable, operations: Any, now: Any = None) -> Any:
        nonlocal applied
        applied += 1
        return real_apply(table, operations, now)

    monkeypatch.setattr(RecordTable, "apply", counting_apply)
    monkeypatch.setattr(aiofile, "SLICE_SECONDS", 0.0)  # a loop turn at every pause point
    write = asyncio.create_task(store.write(upserts(3, 3000), time.time()))
    while applied < 2:
        await asyncio.sleep(0)
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert (path.read_bytes(), journal_of(path).read_bytes()) == saved
    assert await store.load(session_id(3)) is None, "the half-merged batch is not served"
    assert await store.count() == 3
    await store.write(upserts(3, 3000), time.time())
    assert sync_store(path).count() == 3003


async def test_a_full_disk_loses_nothing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"aiofile://{path}"
    async with AsyncSessionService(url, write_behind=True, save_delay_seconds=3600) as svc:
        sid = await svc.create_session("alice", {"n": 1})
        await svc.force_save()
        saved = path.read_bytes(), journal_of(path).read_bytes()
        made = [await svc.create_session(f"u{n}") for n in range(3)]

        def disk_full(fd: int, data: bytes) -> None:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(fsio, "write_all", disk_full)
            with pytest.raises(StoreUnavailableError, match="disk full"):
                await svc.force_save()
            assert (path.read_bytes(), journal_of(path).read_bytes()) == saved
            assert temp_files(path.parent) == []
            assert (await svc.stats())["pending_sessions"] == 3
        assert await svc.force_save() == 3
    with SessionService(path) as sync:
        assert all(sync.get_session(s) is not None for s in [sid, *made])


# -- several processes ---------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import asyncio, sys
    from pooled_sessions import AsyncSessionService

    async def main(url, name, count):
        async with AsyncSessionService(url, save_delay_seconds=3600) as svc:
            for n in range(count):
                sid = await svc.create_session(name, {"n": n, "pad": "x" * 200})
                if n % 10 == 9:
                    await svc.force_save()
                    print(sid, flush=True)  # acknowledged: every session before it is saved

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


def spawn(url: str, name: str, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, url, name, str(count)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def lines_of(process: subprocess.Popen[str]) -> Iterator[str]:
    assert process.stdout is not None
    for line in process.stdout:
        yield line.strip()


def test_kill_9_of_a_writer_leaves_a_file_that_always_parses(path: Path) -> None:
    rng = random.Random(5)
    acknowledged: list[str] = []
    for round_ in range(6):
        with spawn(f"aiofile://{path}", f"w{round_}", 100_000) as writer:
            lines = lines_of(writer)
            for _ in range(rng.randrange(3, 12)):
                acknowledged.append(next(lines))
            time.sleep(rng.uniform(0.0, 0.05))
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
        sessions = stored(path).sessions  # never half a snapshot, no damaged journal line
        assert set(acknowledged) <= set(sessions), "no acknowledged session is lost"
    with SessionService(path) as sync:  # and the next process cleans up after the crashes
        assert all(sync.get_session(sid) is not None for sid in acknowledged)
    assert temp_files(path.parent) == []


def test_async_and_sync_processes_share_one_file(path: Path) -> None:
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(spawn(f"aiofile://{path}", f"p{k}", 60)) for k in range(2)]
        with SessionService(path, save_delay_seconds=0.01, batch_save_threshold=5) as sync:
            mine = [sync.create_session("sync", {"n": n}) for n in range(60)]
        for writer in writers:
            assert [line for line in lines_of(writer)] and writer.wait(60) == 0
    with SessionService(path) as check:
        assert sorted(check.sessions_of("sync")) == sorted(mine)
        assert len(check.sessions_of("p0")) == len(check.sessions_of("p1")) == 60
