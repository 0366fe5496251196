"""``aiofile:///path`` (and ``file://`` or a plain path for the asyncio service): the JSON
file store without blocking the event loop.

The same files, format, lock file and guarantees as ``file://`` (store.py), because it
runs the same `FileMirror` steps: file I/O (reading the snapshot and the journal, the
journal append + fdatasync, a new snapshot's write + fsync + rename + directory fsync) in
aiofiles' worker threads, and the CPU-heavy steps (parsing a changed file, merging a
batch, encoding a snapshot) on the loop in slices of about `SLICE_SECONDS`, so other
tasks keep running while a large file is read or compacted. The lock file is polled
without blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pooled_sessions.adapters.file import fsio, probe
from pooled_sessions.adapters.file.mirror import Append, FileMirror, Look, Steps
from pooled_sessions.adapters.file.store import perform, sync_appended
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Changes, Operation, Record, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.errors import MissingDependencyError

T = TypeVar("T")
R = TypeVar("R")
SLICE_SECONDS = 0.002
"""How long file steps may hold the loop before letting other tasks run."""
LOCK_POLL_SECONDS = (0.001, 0.05)
"""First and longest pause between two tries of a lock file another process holds."""
LOOK = Look()
"""The one `Look` step: it carries nothing, so one instance serves every call."""


def _threaded(function: Callable[..., R]) -> Callable[..., Awaitable[R]]:
    """``function`` run in aiofiles' worker threads."""
    try:
        import aiofiles.os
    except ImportError as exc:
        raise MissingDependencyError(
            'the aiofile:// store needs aiofiles: pip install "pooled-sessions[aiofiles]"'
        ) from exc
    threaded: Callable[..., Awaitable[R]] = aiofiles.os.wrap(function)
    return threaded


class AioFileStore:
    """The JSON file store for `AsyncSessionService`; safe for several processes."""

    def __init__(self, url: StoreURL, settings: Settings) -> None:
        self._perform = _threaded(perform)
        self._append_and_sync = _threaded(self._appended_and_synced)
        self.url = url.text
        self.path = url.path
        self._ttl = settings.tombstone_ttl_seconds
        self._mirror = FileMirror(self.path, paced=True)
        self._lock = asyncio.Lock()  # one read-merge-write (or reread) at a time in-process
        self._lock_file = fsio.LockFile(self.path)
        self._opened = False
        fsio.check_directory(self.path)

    async def check(self) -> None:
        """Raise `StoreUnavailableError` unless the file can be written (service start)."""
        await asyncio.to_thread(probe.check_writable, self.path)

    async def load(self, session_id: str) -> Record | None:
        await self._fresh()
        return self._mirror.table.load(session_id)

    async def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        """Records of several sessions (None for each one gone), the file checked once."""
        await self._fresh()
        return self._mirror.table.load_many(session_ids)

    async def load_user(self, username: str) -> Mapping[str, Record]:
        await self._fresh()
        return self._mirror.table.load_user(username)

    async def ended(self, session_id: str) -> bool:
        await self._fresh()
        return session_id in self._mirror.table.tombstones

    async def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        return await self._commit(self._mirror.writing(operations, now))

    async def purge_expired(self, now: float) -> int:
        return await self._commit(self._mirror.purging(now, self._ttl))

    async def _commit(self, steps: Steps[T]) -> T:
        """`JsonFileStore._commit`: the line appended is made durable after the lock file
        is let go, in the same worker-thread hop as the append (`_appended_and_synced`)."""
        await self._ready()
        async with self._exclusive():
            return await self._run(steps)

    def _appended_and_synced(self, step: Append) -> fsio.Appended:
        """In a worker thread: the append, a commit's last step under the lock file; the
        lock file let go, so other processes append meanwhile; then the ``fdatasync``.
        One hop to a thread where the two steps took two (about 100 µs each here)."""
        appended: fsio.Appended = perform(self.path, step)
        self._lock_file.release()  # `_exclusive` lets go again on the loop: a no-op then
        sync_appended(self.path, [appended.fd])
        return appended._replace(fd=fsio.SYNCED)

    async def compact(self) -> bool:
        """Fold the journal into a new snapshot now; False when there was nothing to fold."""
        await self._ready()
        async with self._exclusive():
            return await self._run(self._mirror.compacting())

    async def poll(self) -> Changes:
        return await self._fresh()

    async def scan(self) -> AsyncIterator[tuple[str, Record]]:
        await self._fresh()
        for pair in self._mirror.table.scan():
            yield pair

    async def count(self) -> int:
        await self._fresh()
        return len(self._mirror.table)

    async def close(self) -> None:
        """Let go of the files held open (a later call opens them again)."""
        async with self._lock:
            self._mirror.release()
            self._lock_file.close()

    async def _fresh(self) -> Changes:
        """Catch up with the files if another process changed them; what it changed.

        The check is an fstat() of each file held open (`FileMirror.still`), else a stat()
        of each path, on the loop: a syscall costs about a microsecond, a hop to a worker
        thread fifty times that, on every load.
        """
        await self._ready()
        if self._mirror.still() or not self._mirror.behind(self._look()):
            return False
        async with self._lock:
            sight = self._look()
            if not self._mirror.behind(sight):
                return False
            return await self._run(self._mirror.refreshing(sight))

    def _look(self) -> fsio.Sight:
        sight: fsio.Sight = perform(self.path, LOOK)  # an OS error names the file
        return sight

    async def _ready(self) -> None:
        """Before the first use: remove temp files a crashed writer left and read the
        files, the lock file held (so a damaged journal is told from a write under way)."""
        if self._opened:
            return
        async with self._exclusive():
            if not self._opened:
                await asyncio.to_thread(fsio.remove_strays, self.path)
                await self._run(self._mirror.refreshing(settled=True))
                self._opened = True

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """This store's lock, then the cross-process lock file, polled so the loop runs on."""
        async with self._lock:
            await self._take_lock_file()
            try:
                yield
            finally:
                self._lock_file.release()

    async def _take_lock_file(self) -> None:
        pause, longest = LOCK_POLL_SECONDS
        while True:
            try:
                if self._lock_file.take(wait=False):
                    return
            except OSError as exc:
                raise fsio.lock_failed(self.path, exc) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)

    async def _run(self, steps: Steps[T]) -> T:
        """Drive `FileMirror` steps: I/O in a worker thread, a loop turn once a slice is used."""
        try:
            reply: Any = None
            resume_at = time.perf_counter() + SLICE_SECONDS
            appended = False
            while True:
                step = steps.send(reply)
                if appended and step is not None:
                    raise RuntimeError(f"{step!r} after the append, with the lock file let go")
                if type(step) is Look:  # two stats: on the loop, as `_fresh` does
                    reply = self._look()
                    continue
                if type(step) is Append:
                    reply = await self._in_thread(self._append_and_sync(step))
                    appended = True
                    continue
                if step is not None:
                    reply = await self._in_thread(self._perform(self.path, step))
                    resume_at = time.perf_counter() + SLICE_SECONDS
                    continue
                reply = None
                if time.perf_counter() >= resume_at:
                    await asyncio.sleep(0)
                    resume_at = time.perf_counter() + SLICE_SECONDS
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            steps.close()  # cancelled or failed: the steps mark the mirror for a reread

    async def _in_thread(self, work: Awaitable[Any]) -> Any:
        """One blocking file step in a worker thread.

        A thread cannot be stopped, so a cancel waits for it to finish before it goes on:
        the lock file is never let go while a replace is still under way.
        """
        future = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            if not future.cancelled():
                future.exception()  # retrieved: the cancel is what the caller hears
            raise
