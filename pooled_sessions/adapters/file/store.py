"""``file:///path`` or a plain path: every session in a JSON snapshot and its journal.

The process keeps the parsed files in memory (a `FileMirror`) and notices, by one fstat of
each file it holds (a stat of each path when that cannot tell), when another process
appended to the journal or wrote a new snapshot. Each
write commits one batch under an exclusive lock on a separate lock file: one appended
journal line and one fdatasync, or now and then a new snapshot (see mirror.py).

The mirror's steps yield the file I/O they need; this store runs them blocking with `run`,
the asyncio store (store_async.py) in worker threads and slices of the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from pooled_sessions.adapters.file import fsio, journal, probe
from pooled_sessions.adapters.file.mirror import (
    Append,
    FileMirror,
    FileStep,
    Look,
    OpenPair,
    ReadFrom,
    Replace,
    Steps,
)
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Changes, Operation, Record, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.errors import StoreUnavailableError

T = TypeVar("T")
logger = logging.getLogger("session_service")
_READS = (Look, OpenPair, ReadFrom)


def perform(path: str, step: FileStep) -> Any:
    """Do one file step, blocking; an OS error becomes StoreUnavailableError naming the file."""
    try:
        return _do(path, step)
    except OSError as exc:
        verb = "read" if isinstance(step, _READS) else "write"
        target = step.target if isinstance(step, Replace) else path
        if isinstance(step, Append | ReadFrom):
            target = journal.path_of(path)
        raise StoreUnavailableError(f"cannot {verb} {target}: {fsio.describe(exc)}") from exc


def _do(path: str, step: FileStep) -> Any:
    if isinstance(step, Look):
        return fsio.look(path, journal.path_of(path))
    if isinstance(step, OpenPair):
        return fsio.read_pair(path, journal.path_of(path))
    if isinstance(step, ReadFrom):
        return fsio.read_pinned(step.held, step.offset)
    if isinstance(step, Append):
        return fsio.append(journal.path_of(path), step.inode, step.at, step.data)
    if isinstance(step, Replace):
        return fsio.replace_pinned(step.target, step.pieces)
    raise TypeError(f"not a file step: {step!r}")


def sync_appended(path: str, fds: Sequence[int]) -> None:
    """Make the journal lines a write appended durable (`fsio.sync`), after the lock file
    is let go; an OS error becomes StoreUnavailableError naming the journal."""
    try:
        fsio.sync(fds)
    except OSError as exc:
        raise StoreUnavailableError(
            f"cannot write {journal.path_of(path)}: {fsio.describe(exc)}"
        ) from exc


def run(steps: Steps[T], path: str) -> T:
    """Run file steps to their end, blocking; pause points are passed over."""
    try:
        reply: Any = None
        while True:
            step = steps.send(reply)
            reply = None if step is None else perform(path, step)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        steps.close()  # a failed step: the steps see GeneratorExit and forget what they held


class JsonFileStore:
    """The embedded default store: a JSON snapshot and its journal, safe for several processes."""

    def __init__(self, url: StoreURL, settings: Settings) -> None:
        self.url = url.text
        self.path = url.path
        self._ttl = settings.tombstone_ttl_seconds
        self._mutex = threading.Lock()
        self._mirror = FileMirror(self.path)
        fsio.check_directory(self.path)
        self._guard = fsio.Guard(self._mutex, self.path)
        with self._guard:
            fsio.remove_strays(self.path)
            run(self._mirror.refreshing(settled=True), self.path)

    def check(self) -> None:
        """Raise `StoreUnavailableError` unless the file can be written (service start)."""
        probe.check_writable(self.path)

    def load(self, session_id: str) -> Record | None:
        with self._mutex:
            self._refresh_if_stale()
            return self._mirror.table.load(session_id)

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        """Records of several sessions (None for each one gone), the file checked once."""
        with self._mutex:
            self._refresh_if_stale()
            return self._mirror.table.load_many(session_ids)

    def load_user(self, username: str) -> Mapping[str, Record]:
        with self._mutex:
            self._refresh_if_stale()
            return self._mirror.table.load_user(username)

    def ended(self, session_id: str) -> bool:
        """True if ``session_id`` was ended, by any process (its tombstone is in the file)."""
        with self._mutex:
            self._refresh_if_stale()
            return session_id in self._mirror.table.tombstones

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        return self._commit(self._mirror.writing(operations, now))

    def purge_expired(self, now: float) -> int:
        return self._commit(self._mirror.purging(now, self._ttl))

    def compact(self) -> bool:
        """Fold the journal into a new snapshot now; False when there was nothing to fold."""
        with self._guard:
            return run(self._mirror.compacting(), self.path)

    def poll(self) -> Changes:
        with self._mutex:
            return self._refresh_if_stale()

    def scan(self) -> Iterator[tuple[str, Record]]:
        with self._mutex:
            self._refresh_if_stale()
            return self._mirror.table.scan()

    def count(self) -> int:
        with self._mutex:
            self._refresh_if_stale()
            return len(self._mirror.table)

    def close(self) -> None:
        """Let go of the files held open (a later call opens them again)."""
        with self._mutex:
            self._mirror.release()
            self._guard.lock.close()

    def _commit(self, steps: Steps[T]) -> T:
        """Run write steps under the lock file; the journal line they appended is made
        durable once the lock is let go (see `fsio.append`), before this returns."""
        with self._guard:
            try:
                result = run(steps, self.path)
            finally:
                unsynced = self._mirror.take_unsynced()
        try:
            sync_appended(self.path, unsynced)
        except StoreUnavailableError:
            with self._mutex:
                self._mirror.suspect = True  # the next write starts a new snapshot
            raise
        return result

    def _refresh_if_stale(self) -> Changes:
        if self._mirror.still():
            return False
        sight = fsio.look(self.path, self._mirror.journal_path)
        if not self._mirror.behind(sight):
            return False
        return run(self._mirror.refreshing(sight), self.path)
