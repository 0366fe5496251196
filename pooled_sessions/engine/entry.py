"""The engine's own view of one live session (never handed to callers)."""

from __future__ import annotations

from pooled_sessions.codec import Record, Upsert, encode_stored, expiry_passed
from pooled_sessions.model import Session, shared_user_agent, snapshot
from pooled_sessions.user_ids import IdsByUser


class Entry:
    """A live session as the engine holds it: attributes kept JSON-encoded.

    ``attributes`` is copy-on-write: it is replaced, never changed in place, so snapshots
    and pending writes can share it.
    """

    __slots__ = (
        "session_id",
        "username",
        "attributes",
        "ip",
        "user_agent",
        "created_at",
        "last_accessed_at",
        "expires_at",
        "absolute_expires_at",
        "stored_expires_at",
        "stale",
    )

    def __init__(
        self,
        *,
        session_id: str,
        username: str,
        attributes: dict[str, str],
        ip: str | None,
        user_agent: str | None,
        created_at: float,
        last_accessed_at: float,
        expires_at: float,
        absolute_expires_at: float | None,
        stored_expires_at: float,
    ) -> None:
        self.session_id = session_id
        self.username = username
        self.attributes = attributes
        self.ip = ip
        self.user_agent = user_agent
        self.created_at = created_at
        self.last_accessed_at = last_accessed_at
        self.expires_at = expires_at
        self.absolute_expires_at = absolute_expires_at
        self.stored_expires_at = stored_expires_at
        self.stale = False

    @classmethod
    def from_record(cls, session_id: str, record: Record) -> Entry:
        """An entry for a session read from a store."""
        return cls(
            session_id=session_id,
            username=record["username"],
            attributes=encode_stored(record["attributes"]),
            ip=record["ip"],
            user_agent=shared_user_agent(record["user_agent"]),
            created_at=record["created_at"],
            last_accessed_at=record["last_accessed_at"],
            expires_at=record["expires_at"],
            absolute_expires_at=record["absolute_expires_at"],
            stored_expires_at=record["expires_at"],
        )

    @classmethod
    def from_upsert(cls, op: Upsert) -> Entry:
        """An entry rebuilt from a write that is still owed to the store."""
        return cls(
            session_id=op.session_id,
            username=op.username,
            attributes=dict(op.attributes),
            ip=op.ip,
            user_agent=op.user_agent,
            created_at=op.created_at,
            last_accessed_at=op.last_accessed_at,
            expires_at=op.expires_at,
            absolute_expires_at=op.absolute_expires_at,
            stored_expires_at=op.expires_at if not op.created else 0.0,
        )

    def copy(self) -> Entry:
        """This entry as it is now, not stale (``attributes`` are shared: they are never
        changed in place). Built field by field: `copy.copy` of a slotted object costs
        four times as much, once per change."""
        return Entry(
            session_id=self.session_id,
            username=self.username,
            attributes=self.attributes,
            ip=self.ip,
            user_agent=self.user_agent,
            created_at=self.created_at,
            last_accessed_at=self.last_accessed_at,
            expires_at=self.expires_at,
            absolute_expires_at=self.absolute_expires_at,
            stored_expires_at=self.stored_expires_at,
        )

    def renamed(self, session_id: str) -> Entry:
        """The same session under another id, not yet written (a rotation)."""
        twin = self.copy()
        twin.session_id, twin.stored_expires_at = session_id, 0.0
        return twin

    def expired(self, now: float) -> bool:
        """True once the idle or the absolute expiry has passed."""
        return expiry_passed(self.expires_at, self.absolute_expires_at, now)

    def snapshot(self) -> Session:
        """A read-only copy for a caller."""
        return snapshot(self)

    def upsert(
        self,
        changed: set[str],
        removed: set[str],
        created: bool,
        rotated_from: tuple[str, ...] = (),
        succeeds: str | None = None,
    ) -> Upsert:
        """The write that brings the store up to this entry."""
        return Upsert(
            session_id=self.session_id,
            username=self.username,
            attributes=self.attributes,
            changed=frozenset(changed),
            removed=frozenset(removed),
            ip=self.ip,
            user_agent=self.user_agent,
            created_at=self.created_at,
            last_accessed_at=self.last_accessed_at,
            expires_at=self.expires_at,
            absolute_expires_at=self.absolute_expires_at,
            created=created,
            rotated_from=rotated_from,
            create=created,
            succeeds=succeeds,
        )

    def overlay(self, local: Entry, changed: set[str], removed: set[str]) -> None:
        """Re-apply a stale entry's unwritten changes on top of this fresher store copy."""
        attributes = {k: v for k, v in self.attributes.items() if k not in removed}
        attributes.update((k, local.attributes[k]) for k in changed if k in local.attributes)
        self.attributes = attributes
        self.last_accessed_at = max(self.last_accessed_at, local.last_accessed_at)
        self.expires_at = max(self.expires_at, local.expires_at)


class EntryIndex(dict[str, Entry]):
    """The engine's live entries by id, with an index of ids by user kept in step."""

    __slots__ = ("by_user",)

    def __init__(self) -> None:
        super().__init__()
        self.by_user = IdsByUser()

    def install(self, entry: Entry) -> None:
        """Add or replace one entry."""
        old = self.get(entry.session_id)
        if old is not None and old.username != entry.username:
            self.by_user.discard(old.username, old.session_id)
        self[entry.session_id] = entry
        self.by_user.add(entry.username, entry.session_id)

    def remove(self, session_id: str) -> None:
        """Drop one entry, if present."""
        entry = self.pop(session_id, None)
        if entry is not None:
            self.by_user.discard(entry.username, session_id)
