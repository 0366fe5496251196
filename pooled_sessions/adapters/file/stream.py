"""Read a sessions file one record at a time, so a tool never holds the whole file in memory.

The JSON file stores parse the whole document; `DocumentStream` walks the same snapshot
incrementally, checking every record as `codec.decode_document` would, and `StoreStream`
lays the journal over it. Neither writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Any

from pooled_sessions.adapters.file import fsio, journal
from pooled_sessions.codec import FORMAT_NAME, Record, check_record, check_time, check_version
from pooled_sessions.errors import CorruptStoreError, StoreUnavailableError

CHUNK_CHARS = 1 << 20
_SPACE = re.compile(r"[ \t\n\r]*")
_PLAIN_KEY = re.compile(r'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:')
_AFTER_VALUE = re.compile(r"[ \t\n\r]*([,}])")
_decode = json.JSONDecoder().raw_decode


class _Tokens:
    """A growing window on a text file, with just enough JSON parsing to walk objects."""

    def __init__(self, file: IO[str], where: str) -> None:
        self._file = file
        self._where = where
        self._buf = ""
        self._pos = 0
        self._eof = False

    def corrupt(self, what: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"{self._where} is not a valid sessions file ({what}); it was left as it is"
        )

    def _more(self) -> bool:
        """Append the next chunk (at least as much as is buffered: no quadratic re-parsing)."""
        if self._eof:
            return False
        try:
            data = self._file.read(max(CHUNK_CHARS, len(self._buf) - self._pos))
        except UnicodeDecodeError as exc:
            raise self.corrupt(f"not UTF-8: {exc.reason}") from None
        if not data:
            self._eof = True
            return False
        self._buf = self._buf[self._pos :] + data
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            self._pos = _SPACE.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            raise self.corrupt(f"expected {char!r}, found {found or 'the end of the file'!r}")
        self._pos += 1

    def value(self) -> Any:
        """The next complete JSON value."""
        self.peek()
        while True:
            try:
                value, end = _decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                raise self.corrupt(exc.msg) from None
            if end == len(self._buf) and self._more():
                continue  # a number at the end of the window may be cut short
            self._pos = end
            return value

    def members(self) -> Iterator[str]:
        """Keys of the object that starts here; the caller reads each value after its key."""
        self.expect("{")
        if self.peek() == "}":
            self._pos += 1
            return
        while True:
            yield self._key()
            found = _AFTER_VALUE.match(self._buf, self._pos)  # the common case, in one step
            char = found.group(1) if found else self.peek()
            self._pos = found.end() if found else self._pos + 1
            if char == "}":
                return
            if char != ",":
                raise self.corrupt(f"expected ',' or '}}', found {char or 'the end'!r}")

    def _key(self) -> str:
        plain = _PLAIN_KEY.match(self._buf, self._pos)  # no escapes: no decoding needed
        if plain is not None:
            self._pos = plain.end()
            return plain.group(1)
        key = self.value()
        if not isinstance(key, str):
            raise self.corrupt("an object key is not a string")
        self.expect(":")
        return key

    def finish(self) -> None:
        if self.peek():
            raise self.corrupt("data after the document")


class DocumentStream:
    """One pass over a snapshot: `records()` streams, then `tombstones` is filled in.

    ``generation`` and ``version`` are known once the header has been checked: before the
    first record in a file this library wrote, at the end in any other.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.tombstones: dict[str, float] = {}
        self.generation = 0
        self.version = 0

    def records(self) -> Iterator[tuple[str, Record]]:
        """Every session record, checked, in file order; raises CorruptStoreError at a bad one."""
        try:
            file = open(self.path, encoding="utf-8", newline="")  # noqa: SIM115
        except FileNotFoundError:
            raise StoreUnavailableError(f"no sessions file at {self.path}") from None
        except IsADirectoryError:
            raise StoreUnavailableError(
                f"{self.path} is a directory, not a sessions file"
            ) from None
        except OSError as exc:
            raise StoreUnavailableError(f"cannot read {self.path}: {exc.strerror}") from exc
        with file:
            yield from self.read(file)

    def read(self, file: IO[str]) -> Iterator[tuple[str, Record]]:
        """`records` of a document already open as text (the aiofile store parses in steps)."""
        return self._walk(_Tokens(file, self.path))

    def _walk(self, tokens: _Tokens) -> Iterator[tuple[str, Record]]:
        header: dict[str, Any] = {}
        seen = set()
        for key in tokens.members():
            if key == "sessions":
                if header:
                    self._check_header(header, tokens)
                yield from self._sessions(tokens)
            elif key == "tombstones":
                self.tombstones = self._tombstones(tokens)
            else:
                header[key] = tokens.value()
            seen.add(key)
        tokens.finish()
        self._check_header(header, tokens)
        if not {"sessions", "tombstones"} <= seen:
            raise tokens.corrupt("it lacks its sessions or tombstones table")

    def _check_header(self, header: dict[str, Any], tokens: _Tokens) -> None:
        if header.get("format") != FORMAT_NAME:
            raise tokens.corrupt("not a pooled_sessions file")
        self.version, self.generation = check_version(header, self.path)

    def _sessions(self, tokens: _Tokens) -> Iterator[tuple[str, Record]]:
        if tokens.peek() != "{":
            raise tokens.corrupt("the sessions table is not an object")
        for sid in tokens.members():
            yield sid, check_record(sid, tokens.value(), self.path)

    def _tombstones(self, tokens: _Tokens) -> dict[str, float]:
        table = tokens.value()
        if not isinstance(table, dict):
            raise tokens.corrupt("the tombstones table is not an object")
        for sid, ended_at in table.items():
            check_time(ended_at, sid, self.path)
        return table


class StoreStream:
    """One pass over a snapshot and its journal, for the tools; nothing is written.

    The snapshot streams record by record; the journal (bounded by compaction) is read
    first and laid over it: a snapshot record the journal changed or ended is skipped,
    and the journal's records follow the snapshot's.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.journal_path = journal.path_of(path)
        self.tombstones: dict[str, float] = {}

    def records(self) -> Iterator[tuple[str, Record]]:
        """Every live record, checked; then `tombstones` holds the ended ids."""
        snapshot, held = fsio.pin_pair(self.path, self.journal_path)
        try:
            if snapshot is None:
                raise StoreUnavailableError(f"no sessions file at {self.path}")
            data = None if held is None else fsio.read_pinned(held)
            yield from self._streamed(snapshot, data)
        finally:
            for pinned in (snapshot, held):
                if pinned is not None:
                    pinned.close()

    def _streamed(self, snapshot: fsio.Pin, data: bytes | None) -> Iterator[tuple[str, Record]]:
        document = DocumentStream(self.path)
        overlay: Overlay | None = None
        with open(snapshot.fd, encoding="utf-8", newline="", closefd=False) as text:
            for sid, record in document.read(text):
                if overlay is None:  # the header of a file this library wrote is checked
                    overlay = self._overlay(data, document)
                if sid not in overlay.records:
                    yield sid, record
        if overlay is None:
            overlay = self._overlay(data, document)
        yield from overlay.live()
        self.tombstones = overlay.tombstones(document.tombstones)

    def _overlay(self, data: bytes | None, document: DocumentStream) -> Overlay:
        """The journal's changes if it extends this snapshot (none if it is superseded)."""
        if data is None:
            return Overlay([])
        extends, start = journal.read_header(data, self.journal_path)
        lines = journal.read_changes(data[start:], self.journal_path, start, settled=True)
        changes = [change for change, _ in lines]
        if document.version and extends == document.generation:
            return Overlay(changes)
        if changes and (not document.version or extends > document.generation):
            raise CorruptStoreError(
                f"{self.journal_path} extends generation {extends} of {self.path}, whose "
                f"header says generation {document.generation or 'none before its sessions'}; "
                "both were left as they are"
            )
        return Overlay([])


class Overlay:
    """Journal changes laid over a streamed snapshot."""

    def __init__(self, changes: list[journal.Change]) -> None:
        self.changes = changes
        self.records: dict[str, Record | None] = {}  # None: ended or dropped
        for change in changes:
            self.records.update(dict.fromkeys([*change.dropped, *change.ended]))
            self.records.update(change.records)

    def live(self) -> Iterator[tuple[str, Record]]:
        """The records the journal holds last, in the order it first named them."""
        return ((sid, record) for sid, record in self.records.items() if record is not None)

    def tombstones(self, snapshot: dict[str, float]) -> dict[str, float]:
        """The snapshot's tombstones with the journal's ends and purges replayed."""
        table = dict(snapshot)
        for change in self.changes:
            for sid in change.forgotten:
                table.pop(sid, None)
            for sid, ended_at in change.ended.items():
                table[sid] = max(ended_at, table.get(sid, ended_at))
        return table
