"""``file:///path`` or a plain path: every session in one JSON file, replaced atomically.

The process keeps the file's content in memory (a `RecordTable`) and notices, by the
file's stamp, when another process replaced it. Each write is a read-merge-write under
an exclusive lock on a separate lock file, so no process erases another's sessions.

`FileMirror` holds those steps once, as generators that yield the file I/O they need
(`ReadFile`, `ReplaceFile`) and pause points (None); this store runs them blocking with
`run`, the asyncio store (aiofile.py) in worker threads and slices of the event loop.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from pooled_sessions.adapters.file import fsio
from pooled_sessions.adapters.file.stream import DocumentStream
from pooled_sessions.adapters.record_table import RecordTable
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Operation, Record, WriteResult, decode_document
from pooled_sessions.config import Settings
from pooled_sessions.errors import StoreUnavailableError

T = TypeVar("T")
logger = logging.getLogger("session_service")
PACE = 128
"""Records (or operations) handled between two pause points of the file steps."""
UNKNOWN = fsio.Stamp(-1, -1, -1)
"""The stamp of a mirror that may differ from every file: reread it before the next use."""


class ReadFile(NamedTuple):
    """File step: the file and its stamp (``fsio.read_file``); no bytes if still ``known``."""

    known: fsio.Stamp | None = None


class ReplaceFile(NamedTuple):
    """File step: replace the file atomically with ``pieces``; answered with the new stamp."""

    pieces: list[bytes]


FileStep = ReadFile | ReplaceFile | None
Steps = Generator[FileStep, Any, T]


def perform(path: str, step: ReadFile | ReplaceFile) -> Any:
    """Do one file step, blocking; an OS error becomes StoreUnavailableError naming the file."""
    try:
        if isinstance(step, ReadFile):
            return fsio.read_file(path, step.known)
        return fsio.replace_atomically(path, step.pieces)
    except OSError as exc:
        verb = "read" if isinstance(step, ReadFile) else "write"
        raise StoreUnavailableError(f"cannot {verb} {path}: {fsio.describe(exc)}") from exc


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
        steps.close()  # a failed step: the steps see GeneratorExit and mark the mirror unknown


class FileMirror:
    """The in-memory copy of a sessions file and the stamp of the version it mirrors.

    ``paced``: parse a changed file a few hundred records at a time between pause points
    (for an event loop), rather than in one step.
    """

    def __init__(self, path: str, *, paced: bool = False) -> None:
        self.path = path
        self.paced = paced
        self.table = RecordTable()
        self.stamp: fsio.Stamp | None = None

    def refreshing(self) -> Steps[bool]:
        """Read the file and mirror it; True if it differs from what was mirrored."""
        content = yield ReadFile(self.stamp)
        if self.paced:
            return (yield from self.adopting(content))
        return self.adopt(content)

    def writing(self, operations: Sequence[Operation], now: float) -> Steps[WriteResult]:
        """Read-merge-write of one batch; the caller holds the lock file."""
        reloaded = yield from self.refreshing()
        refused: set[str] = set()
        taken: set[str] = set()
        try:
            for start in range(0, len(operations), PACE):
                result = self.table.apply(operations[start : start + PACE], now)
                refused |= result.refused
                taken |= result.taken
                yield None
            yield from self._saving()
        except BaseException:
            self.stamp = UNKNOWN  # the table may be ahead of the file
            raise
        return WriteResult(frozenset(refused), reloaded, frozenset(taken))

    def purging(self, now: float, tombstone_ttl: float) -> Steps[int]:
        """Drop expired records and old tombstones, saving if any went; caller holds the lock."""
        yield from self.refreshing()
        try:
            purged, tombstones = self.table.purge(now, tombstone_ttl)
            if purged or tombstones:
                yield from self._saving()
        except BaseException:
            self.stamp = UNKNOWN
            raise
        return purged

    def _saving(self) -> Steps[None]:
        while self.table.encode_changed(PACE):
            yield None
        pieces = []
        for part in self.table.document_parts():
            pieces.append(part.encode())
            yield None
        self.stamp = yield ReplaceFile(pieces)

    def adopting(self, content: tuple[bytes | None, fsio.Stamp] | None) -> Steps[bool]:
        """`adopt`, parsing a changed file `PACE` records at a time between pause points."""
        if content is None or content[0] is None or content[1] == self.stamp:
            return self.adopt(content)
        data, stamp = content
        assert data is not None  # checked above (a tuple element is not narrowed)
        stream = DocumentStream(self.path)
        table = RecordTable()
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")
        for count, (sid, record) in enumerate(stream.read(text), 1):
            table.add(sid, record)
            if not count % PACE:
                yield None
        table.tombstones = dict(stream.tombstones)
        self.table, self.stamp = table, stamp
        return True

    def adopt(self, content: tuple[bytes | None, fsio.Stamp] | None) -> bool:
        """Mirror ``content`` (None: no file; no bytes: the version mirrored); True if it
        differs from what was mirrored."""
        if content is None:
            changed = self.stamp is not None
            if changed and self.stamp != UNKNOWN:
                logger.warning("sessions file %s disappeared; starting empty", self.path)
            self.table, self.stamp = RecordTable(), None
            return changed
        data, stamp = content
        if data is None or stamp == self.stamp:
            return False
        sessions, tombstones = decode_document(data, self.path)
        self.table, self.stamp = RecordTable(sessions, tombstones), stamp
        return True


class JsonFileStore:
    """The embedded default store: one atomic JSON file, safe for several processes."""

    def __init__(self, url: StoreURL, settings: Settings) -> None:
        self.url = url.text
        self.path = url.path
        self._ttl = settings.tombstone_ttl_seconds
        self._mutex = threading.Lock()
        self._mirror = FileMirror(self.path)
        fsio.check_directory(self.path)
        with self._guard():
            fsio.remove_strays(self.path)
            run(self._mirror.refreshing(), self.path)

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
        with self._guard():
            return run(self._mirror.writing(operations, now), self.path)

    def purge_expired(self, now: float) -> int:
        with self._guard():
            return run(self._mirror.purging(now, self._ttl), self.path)

    def poll(self) -> bool:
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
        """Nothing is held open between calls."""

    def _guard(self) -> fsio.Guard:
        return fsio.Guard(self._mutex, self.path)

    def _refresh_if_stale(self) -> bool:
        if fsio.current_stamp(self.path) == self._mirror.stamp:
            return False
        return run(self._mirror.refreshing(), self.path)
