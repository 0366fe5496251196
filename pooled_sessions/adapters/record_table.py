"""An in-memory table of session records with tombstones: the state both local stores keep.

The memory store uses it as is; the JSON file stores load it from, and save it to, a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

from pooled_sessions.codec import (
    Delete,
    Operation,
    Record,
    Upsert,
    WriteResult,
    document_member,
    document_parts,
    encode_record,
    is_expired,
    merge,
    same_creation,
)
from pooled_sessions.user_ids import IdsByUser

ENCODE_AT_ONCE = 1024
"""Changed records encoded before a document is built; more are encoded piece by piece."""


class RecordTable:
    """Records by id, a per-user index, tombstones, and cached JSON text per record."""

    def __init__(
        self,
        records: dict[str, Record] | None = None,
        tombstones: dict[str, float] | None = None,
    ) -> None:
        self.records: dict[str, Record] = records or {}
        self.tombstones: dict[str, float] = tombstones or {}
        self._by_user = IdsByUser()
        self._text: dict[str, str] = {}  # the document member of each record, once encoded
        self._unencoded: dict[str, None] = dict.fromkeys(self.records)  # ordered, as a set
        self.version = 0
        for sid, record in self.records.items():
            self._by_user.add(record["username"], sid)

    def load(self, session_id: str) -> Record | None:
        """The record of one session, or None."""
        return self.records.get(session_id)

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        """The record of each session, or None."""
        records = self.records
        return {sid: records.get(sid) for sid in session_ids}

    def load_user(self, username: str) -> dict[str, Record]:
        """Every record of one user."""
        return {sid: self.records[sid] for sid in self._by_user.ids(username)}

    def apply(self, operations: Sequence[Operation], now: float | None = None) -> WriteResult:
        """Apply a batch as every store does (see `Upsert`): deletes leave tombstones; upserts
        of ended ids, and partial upserts of sessions not held, are refused; creates of ids
        another session holds are taken. With ``now``, a record expired by then is not held
        (as on Redis, where it is gone)."""
        refused: set[str] = set()
        taken: set[str] = set()
        held = self._held_before(operations, now)
        self.version += 1
        for op in operations:
            sid = op.session_id
            if isinstance(op, Delete):
                self._drop(sid)
                self.tombstones[sid] = max(op.ended_at, self.tombstones.get(sid, 0.0))
            elif sid in self.tombstones or (op.succeeds is not None and op.succeeds not in held):
                refused.add(sid)
            elif (outcome := self._upsert(op, now)) is not None:
                (taken if outcome else refused).add(sid)
        return WriteResult(refused=frozenset(refused), taken=frozenset(taken))

    def _held_before(self, operations: Sequence[Operation], now: float | None) -> set[str]:
        """The ids that rotations in ``operations`` succeed and that were live before the
        batch; a rotation already written whole (an earlier attempt of the batch) counts
        as held, the same creation being sent again."""
        held: set[str] = set()
        for op in operations:
            if not isinstance(op, Upsert) or op.succeeds is None:
                continue
            old, mine = self.records.get(op.succeeds), self.records.get(op.session_id)
            if (old is not None and (now is None or not is_expired(old, now))) or (
                mine is not None and same_creation(mine, op.username, op.created_at)
            ):
                held.add(op.succeeds)
        return held

    def _upsert(self, op: Upsert, now: float | None) -> bool | None:
        """Apply one upsert of an id without a tombstone: None if written, True if the id
        is taken, False if refused (a partial write of a session not held)."""
        sid, current = op.session_id, self.records.get(op.session_id)
        if current is not None and now is not None and is_expired(current, now):
            current = None
        if current is None:
            if not op.created:
                return False
            self._drop(sid)  # an expired record is replaced, not merged
        elif op.create and not same_creation(current, op.username, op.created_at):
            return True
        record = self.records[sid] = merge(current, op)
        self._unencoded[sid] = None
        self._by_user.add(record["username"], sid)
        return None

    def purge(self, now: float, tombstone_ttl: float) -> tuple[int, int]:
        """Remove expired records and old tombstones; returns how many of each went."""
        expired, old = self.purge_ids(now, tombstone_ttl)
        return len(expired), len(old)

    def purge_ids(self, now: float, tombstone_ttl: float) -> tuple[list[str], list[str]]:
        """`purge`, returning the ids of the expired records and of the old tombstones."""
        expired = [sid for sid, record in self.records.items() if is_expired(record, now)]
        for sid in expired:
            self._drop(sid)
        self.version += 1
        horizon = now - tombstone_ttl
        old = [sid for sid, ended_at in self.tombstones.items() if ended_at < horizon]
        for sid in old:
            del self.tombstones[sid]
        return expired, old

    def end(self, session_id: str, ended_at: float) -> None:
        """Drop a record and keep its tombstone (the later time if it had one)."""
        self._drop(session_id)
        self.tombstones[session_id] = max(ended_at, self.tombstones.get(session_id, ended_at))

    def remove(self, session_id: str) -> None:
        """Drop a record without a tombstone (an expired one, purged)."""
        self._drop(session_id)

    def members(self, session_ids: Iterable[str]) -> list[str]:
        """The document members of these records, encoded now and kept for the next document."""
        text, records, unencoded = self._text, self.records, self._unencoded
        found = []
        for sid in session_ids:
            if sid in unencoded or sid not in text:
                text[sid] = document_member(sid, encode_record(records[sid]))
                unencoded.pop(sid, None)
            found.append(text[sid])
        return found

    def add(self, session_id: str, record: Record) -> None:
        """Hold a record as read from a file (no merge: the file is the truth)."""
        self._drop(session_id)
        self.records[session_id] = record
        self._unencoded[session_id] = None
        self._by_user.add(record["username"], session_id)

    def document(self, generation: int = 1) -> str:
        """The whole table as a file document."""
        return "".join(self.document_parts(generation))

    def encode_changed(self, limit: int) -> bool:
        """Encode up to ``limit`` changed records ahead of `document_parts` (a writer that
        must not hold the CPU long does it in steps); True while some are left."""
        text, records, unencoded = self._text, self.records, self._unencoded
        for sid in list(islice(unencoded, limit)):
            text[sid] = document_member(sid, encode_record(records[sid]))
            del unencoded[sid]
        return bool(unencoded)

    def document_parts(self, generation: int = 1) -> Iterator[str]:
        """The document in pieces (see `codec.document_parts`); records keep their cached text."""
        return document_parts(self._members(), self.tombstones, generation)

    def _members(self) -> Iterator[str]:
        text, records, unencoded = self._text, self.records, self._unencoded
        if len(unencoded) <= ENCODE_AT_ONCE:  # the usual flush: a few changed records
            for sid in unencoded:
                text[sid] = document_member(sid, encode_record(records[sid]))
            unencoded.clear()
            yield from text.values()
            return
        for sid, record in records.items():  # a freshly read file: encode as the pieces go
            if sid in unencoded:
                text[sid] = document_member(sid, encode_record(record))
            yield text[sid]
        unencoded.clear()

    def scan(self) -> Iterator[tuple[str, Record]]:
        """Every record, in insertion order."""
        return iter(list(self.records.items()))

    def __len__(self) -> int:
        return len(self.records)

    def _drop(self, sid: str) -> None:
        record = self.records.pop(sid, None)
        self._text.pop(sid, None)
        self._unencoded.pop(sid, None)
        if record is not None:
            self._by_user.discard(record["username"], sid)
