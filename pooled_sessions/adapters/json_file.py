"""``file:///path`` or a plain path: every session in one JSON file, replaced atomically.

The process keeps the file's content in memory (a `RecordTable`) and notices, by the
file's stamp, when another process replaced it. Each write is a read-merge-write under
an exclusive lock on a separate lock file, so no process erases another's sessions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence

from ..codec import Operation, Record, WriteResult, decode_document
from ..config import Settings
from ..errors import StoreUnavailableError
from . import fsio
from .table import RecordTable
from .url import StoreURL

logger = logging.getLogger("session_service")


class FileMirror:
    """The in-memory copy of a sessions file and the stamp of the version it mirrors."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.table = RecordTable()
        self.stamp: fsio.Stamp | None = None

    def adopt(self, content: tuple[bytes, fsio.Stamp] | None) -> bool:
        """Mirror ``content`` (None: no file); True if it differs from what was mirrored."""
        if content is None:
            changed = self.stamp is not None
            if changed:
                logger.warning("sessions file %s disappeared; starting empty", self.path)
            self.table, self.stamp = RecordTable(), None
            return changed
        data, stamp = content
        if stamp == self.stamp:
            return False
        sessions, tombstones = decode_document(data, self.path)
        self.table, self.stamp = RecordTable(sessions, tombstones), stamp
        return True

    def document(self) -> bytes:
        """The table as the bytes of a file."""
        return self.table.document().encode()


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
            self._refresh()

    def load(self, session_id: str) -> Record | None:
        with self._mutex:
            self._refresh_if_stale()
            return self._mirror.table.load(session_id)

    def load_user(self, username: str) -> Mapping[str, Record]:
        with self._mutex:
            self._refresh_if_stale()
            return self._mirror.table.load_user(username)

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        with self._guard():
            reloaded = self._refresh()
            result = self._mirror.table.apply(operations)
            self._save()
        return WriteResult(result.refused, reloaded)

    def purge_expired(self, now: float) -> int:
        with self._guard():
            self._refresh()
            purged, tombstones = self._mirror.table.purge(now, self._ttl)
            if purged or tombstones:
                self._save()
        return purged

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
        return self._refresh()

    def _refresh(self) -> bool:
        try:
            return self._mirror.adopt(fsio.read_file(self.path))
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot read {self.path}: {fsio.describe(exc)}"
            ) from exc

    def _save(self) -> None:
        try:
            self._mirror.stamp = fsio.replace_atomically(self.path, self._mirror.document())
        except OSError as exc:
            self._mirror.stamp = None  # mirror holds unsaved changes: reread before next use
            raise StoreUnavailableError(
                f"cannot write {self.path}: {fsio.describe(exc)}"
            ) from exc
