"""The journal beside a sessions snapshot: committed batches appended as checksummed lines.

``sessions.json.journal`` starts with a header line naming the generation of the snapshot
it extends; each later line is one committed batch (or purge): the records it set, the
sessions it ended, the expired records and old tombstones it dropped. A line is
``CRC32 JSON`` and a newline, the CRC32 (8 hex digits) taken over the JSON, so a line
torn by a crash is told from a whole one. Nothing here does I/O.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pooled_sessions.adapters.record_table import RecordTable
from pooled_sessions.codec import Record, check_record, check_time, parse_json
from pooled_sessions.errors import CorruptStoreError

SUFFIX = ".journal"
FORMAT = "pooled_sessions.journal"
VERSION = 1
_CRC_DIGITS = 8
_KEYS = frozenset({"set", "end", "drop", "forget"})
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def path_of(path: str) -> str:
    """The journal of the snapshot at ``path``."""
    return path + SUFFIX


def framed(text: str) -> bytes:
    """One journal line: the checksum, the JSON text, a newline."""
    data = text.encode("utf-8", "backslashreplace")  # a stored lone surrogate: its JSON escape
    return b"%08x %s\n" % (zlib.crc32(data), data)


def header(generation: int) -> bytes:
    """The first line of a journal that extends snapshot ``generation``."""
    return framed(f'{{"format":"{FORMAT}","version":{VERSION},"generation":{generation}}}')


def change_line(
    members: Iterable[str],
    ended: Mapping[str, float] | None = None,
    dropped: Iterable[str] = (),
    forgotten: Iterable[str] = (),
) -> bytes | None:
    """The line of one batch, from `RecordTable.members` texts and ids; None if empty."""
    parts = []
    if text := ",".join(members):
        parts.append(f'"set":{{{text}}}')
    if ended:
        parts.append(f'"end":{_encode(dict(ended))}')
    for key, ids in (("drop", dropped), ("forget", forgotten)):
        if ids := list(ids):
            parts.append(f'"{key}":{_encode(ids)}')
    return framed("{" + ",".join(parts) + "}") if parts else None


@dataclass(slots=True)
class Change:
    """What one journal line did."""

    records: dict[str, Record] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def size(self) -> int:
        """How many sessions and tombstones it names."""
        return len(self.records) + len(self.ended) + len(self.dropped) + len(self.forgotten)


def replay(table: RecordTable, change: Change) -> None:
    """Apply one line to a table, as the writer applied it."""
    for sid in change.dropped:
        table.remove(sid)
    for sid in change.forgotten:
        table.tombstones.pop(sid, None)
    for sid, ended_at in change.ended.items():
        table.end(sid, ended_at)
    for sid, record in change.records.items():
        table.add(sid, record)


class Damaged(Exception):
    """A line that is not a whole journal line (torn, or not this format)."""


def _unframed(line: bytes) -> bytes:
    """The JSON text of one whole line (without its newline); Damaged if it is not one."""
    if len(line) <= _CRC_DIGITS + 1 or line[_CRC_DIGITS] != 0x20:
        raise Damaged
    body = line[_CRC_DIGITS + 1 :]
    try:
        crc = int(line[:_CRC_DIGITS], 16)
    except ValueError:
        raise Damaged from None
    if crc != zlib.crc32(body):
        raise Damaged
    return body


def _parsed(body: bytes, where: str) -> Any:
    """A checksummed line's JSON value: a line with a good checksum was written so, and its
    JSON failing is not a tear but a foreign or damaged journal."""
    try:
        return parse_json(body)
    except (ValueError, RecursionError) as exc:
        raise CorruptStoreError(f"{where} is not valid JSON ({str(exc)[:200]})") from None


def read_header(data: bytes, where: str) -> tuple[int, int]:
    """The generation a journal extends and where its first change line starts."""
    end = data.find(b"\n")
    try:
        if end < 0:
            raise Damaged
        head = parse_json(_unframed(data[:end]))
    except (Damaged, ValueError, RecursionError):
        raise CorruptStoreError(
            f"{where} is not a sessions journal; it was left as it is"
        ) from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise CorruptStoreError(f"{where} is not a sessions journal; it was left as it is")
    if head.get("version") != VERSION:
        raise CorruptStoreError(
            f"{where} has journal version {head.get('version')!r}; this library reads {VERSION}"
        )
    generation = head.get("generation")
    if type(generation) is not int or generation < 1:
        raise CorruptStoreError(f"{where} has a bad generation {generation!r}")
    return generation, end + 1


def read_changes(
    data: bytes, where: str, base: int, *, settled: bool
) -> Iterator[tuple[Change, int]]:
    """Each whole line of ``data`` (journal bytes from offset ``base``) as its change and
    the offset just after it.

    The first line that is not whole ends the reading: a tail torn by a crash, or a line a
    writer is appending now. ``settled`` (the lock file held, so no writer is under way):
    whole lines after a damaged one mean the journal itself is damaged, and that raises.
    """
    for start, line, whole in _lines(data):
        try:
            if not whole:
                raise Damaged
            body = _unframed(line)
        except Damaged:
            if settled and _any_whole(data[start:]):
                raise CorruptStoreError(
                    f"{where}: the line at byte {base + start} is damaged and whole lines "
                    "follow it; it was left as it is"
                ) from None
            return
        at = f"{where} (byte {base + start})"
        yield _change(_parsed(body, at), at), base + start + len(line) + 1


def _lines(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line without its newline, whether it has its newline) of each line."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            yield start, data[start:], False
            return
        yield start, data[start:end], True
        start = end + 1


def _any_whole(data: bytes) -> bool:
    """True if any line after the first of ``data`` is whole."""
    for index, (_, line, whole) in enumerate(_lines(data)):
        if index and whole:
            try:
                _unframed(line)
            except Damaged:
                continue
            return True
    return False


def _change(value: Any, where: str) -> Change:
    """A line's JSON value as a Change, every record and time checked."""
    if not isinstance(value, dict) or not value.keys() <= _KEYS:
        raise CorruptStoreError(f"{where} is not a journal change; it was left as it is")
    records, ended = value.get("set", {}), value.get("end", {})
    dropped, forgotten = value.get("drop", []), value.get("forget", [])
    if not (isinstance(records, dict) and isinstance(ended, dict)):
        raise CorruptStoreError(f"{where}: its sessions or ends are not objects")
    if not (isinstance(dropped, list) and isinstance(forgotten, list)):
        raise CorruptStoreError(f"{where}: its dropped ids are not lists")
    for sid, record in records.items():
        check_record(sid, record, where)
    for sid, ended_at in ended.items():
        check_time(ended_at, sid, where)
    if not all(isinstance(sid, str) for sid in dropped + forgotten):
        raise CorruptStoreError(f"{where}: a dropped id is not a string")
    return Change(records, ended, dropped, forgotten)
