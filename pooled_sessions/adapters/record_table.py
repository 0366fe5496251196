"""An in-memory table of session records with tombstones: the state both local stores keep.

The memory store uses it as is; the JSON file stores load it from, and save it to, a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from pooled_sessions.adapters.held import Held, Loaded
from pooled_sessions.codec import (
    Delete,
    Operation,
    Record,
    Upsert,
    WriteResult,
    document_parts,
)
from pooled_sessions.user_ids import IdsByUser


class RecordTable:
    """Records by id (each a `Held`), a per-user index, and tombstones."""

    def __init__(
        self,
        records: dict[str, Record] | None = None,
        tombstones: dict[str, float] | None = None,
    ) -> None:
        self.records: dict[str, Held] = {}
        self.tombstones: dict[str, float] = tombstones or {}
        self._by_user = IdsByUser()
        self.version = 0
        for sid, record in (records or {}).items():
            self.add(sid, record)

    def load(self, session_id: str) -> Record | None:
        """The record of one session, or None."""
        held = self.records.get(session_id)
        return None if held is None else held.record()

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        """The record of each session, or None."""
        return {sid: self.load(sid) for sid in session_ids}

    def load_user(self, username: str) -> dict[str, Record]:
        """Every record of one user."""
        return {sid: self.records[sid].record() for sid in self._by_user.ids(username)}

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
            if (old is not None and (now is None or not old.expired(now))) or (
                mine is not None and mine.same_creation(op.username, op.created_at)
            ):
                held.add(op.succeeds)
        return held

    def _upsert(self, op: Upsert, now: float | None) -> bool | None:
        """Apply one upsert of an id without a tombstone: None if written, True if the id
        is taken, False if refused (a partial write of a session not held)."""
        sid, current = op.session_id, self.records.get(op.session_id)
        if current is not None and now is not None and current.expired(now):
            current = None
        if current is None:
            if not op.created:
                return False
            self._drop(sid)  # an expired record is replaced, not merged
            self.records[sid] = held = Held.of_upsert(op)
        elif op.create and not current.same_creation(op.username, op.created_at):
            return True
        else:
            self.records[sid] = held = current.merged(op)
        self._by_user.add(held.username, sid)
        return None

    def purge(self, now: float, tombstone_ttl: float) -> tuple[int, int]:
        """Remove expired records and old tombstones; returns how many of each went."""
        expired, old = self.purge_ids(now, tombstone_ttl)
        return len(expired), len(old)

    def purge_ids(self, now: float, tombstone_ttl: float) -> tuple[list[str], list[str]]:
        """`purge`, returning the ids of the expired records and of the old tombstones."""
        expired = [sid for sid, held in self.records.items() if held.expired(now)]
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
        """The document members of these records (a journal line's)."""
        records = self.records
        return [records[sid].member(sid) for sid in session_ids]

    def add(self, session_id: str, record: Record) -> None:
        """Hold a record as read from a file (no merge: the file is the truth)."""
        self._drop(session_id)
        self.records[session_id] = Loaded.of_record(record)
        self._by_user.add(record["username"], session_id)

    def document(self, generation: int = 1) -> str:
        """The whole table as a file document."""
        return "".join(self.document_parts(generation))

    def document_parts(self, generation: int = 1) -> Iterator[str]:
        """The document in pieces (see `codec.document_parts`), each record encoded as its
        piece is built."""
        members = (held.member(sid) for sid, held in self.records.items())
        return document_parts(members, self.tombstones, generation)

    def scan(self) -> Iterator[tuple[str, Record]]:
        """Every record, in insertion order (decoded as the iteration reaches it)."""
        return ((sid, held.record()) for sid, held in list(self.records.items()))

    def __len__(self) -> int:
        return len(self.records)

    def _drop(self, sid: str) -> None:
        held = self.records.pop(sid, None)
        if held is not None:
            self._by_user.discard(held.username, sid)
