"""The engine's reads: validate, get and a user's sessions, and how a session is found,
fetched, admitted from the store and touched. No I/O, no threads, no asyncio.

`Reads` sits between `Batches` (state, flushes) and `Engine` (the changes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pooled_sessions.codec import (
    Changes,
    Record,
    check_username,
    is_valid_id,
    same_creation,
)
from pooled_sessions.engine.batches import Batches
from pooled_sessions.engine.entry import Entry
from pooled_sessions.engine.pending import Dirty
from pooled_sessions.engine.requests import POLL, Flow, Load, LoadUser
from pooled_sessions.errors import StoreError
from pooled_sessions.model import ClientInfo, Reason, Session, ValidationResult

ClientLike = ClientInfo | Mapping[str, Any] | None


def id_or_none(session_id: object) -> str | None:
    """``session_id`` if it is a well-formed id, None if not; a non-str raises TypeError."""
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    return session_id if is_valid_id(session_id) else None


class Reads(Batches):
    """Finding a session for a call: from the cache, or fetched and admitted from the store."""

    def validate(self, session_id: str, client: ClientLike = None) -> Flow[ValidationResult]:
        """Check a session for a request, and touch it when it is valid."""
        sid = id_or_none(session_id)
        if sid is None:
            return ValidationResult(False, Reason.INVALID_ID)
        info = self._binding.coerce(client)
        yield from self._fresh()
        now = self._clock()
        entry = self._entries.get(sid)
        if entry is None or entry.stale or entry.expired(now):
            lapsed = entry is not None and entry.expired(now) and sid not in self._ended
            entry, reason = yield from self._fetch(sid)
            if entry is None:
                # A store that drops expired records itself (Redis) must not change the reason.
                return ValidationResult(False, Reason.EXPIRED if lapsed else reason)
        result = self._validated(entry, info, now)
        if result.valid and (seq := self._touch_written(entry)):
            yield from self._follow(seq, raising=False)
        return result

    def validate_cached(
        self, session_id: object, client: ClientLike = None, *, asked: bool = False
    ) -> ValidationResult | None:
        """`validate` of a cached live session whose touch is not written: no request, and
        nothing follows. None otherwise.

        The drivers' fast path for the most common call: None sends them to `validate`.
        On a store that must be asked for others' changes first (`polls_first`), ``asked``
        says the driver just did (`polled`); if not, the flow asks.
        """
        entry = self._entries.get(session_id) if type(session_id) is str else None
        if entry is None or entry.stale or (self._poll_first and not asked):
            return None
        now = self._clock()
        if entry.expired(now):
            return None
        result = self._validated(
            entry, None if client is None else self._binding.coerce(client), now
        )
        if result.valid and self._touch_pending(entry):
            return None  # `validate` writes the touch (or wakes the flusher)
        return result

    def _validated(self, entry: Entry, info: ClientInfo | None, now: float) -> ValidationResult:
        changed = info is not None and self._binding.differs(entry, info)
        if changed and self.settings.client_binding == "strict":
            return ValidationResult(False, Reason.CLIENT_MISMATCH)
        entry.last_accessed_at = now
        self._extend(entry, now)
        return ValidationResult(True, Reason.OK, entry.snapshot(), changed)

    def get(self, session_id: str) -> Flow[Session | None]:
        """A live session's snapshot, without touching it."""
        sid = id_or_none(session_id)
        if sid is None:
            return None
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        return None if entry is None else entry.snapshot()

    def sessions_of(self, username: str) -> Flow[list[str]]:
        """Ids of one user's live sessions, oldest first.

        The store's list is the truth for what this engine had written: a cached session
        it no longer lists ended or expired elsewhere (its event may still be on the way).
        """
        check_username(username)
        yield from self._fresh()
        dirty = self.pending.is_dirty
        written = {s for s in self._entries.by_user.ids(username) if not dirty(s)}
        records: Mapping[str, Record] = yield LoadUser(username)
        now = self._clock()
        for sid, record in records.items():
            entry = self._entries.get(sid)
            if entry is None or entry.stale:
                self._admit(sid, record, now)
        for sid in [s for s in self._entries.by_user.ids(username) if s not in records]:
            if self._entries[sid].stale or (sid in written and not dirty(sid)):
                self._admit(sid, None, now)  # gone, unless not yet written
        live = [
            self._entries[sid]
            for sid in self._entries.by_user.ids(username)
            if not self._entries[sid].expired(now) and not self._entries[sid].stale
        ]
        return [e.session_id for e in sorted(live, key=lambda e: (e.created_at, e.session_id))]

    @property
    def polls_first(self) -> bool:
        """True when a call must first ask the store whether other processes wrote it (a
        file, which does not push their changes; not with ``write_behind``)."""
        return self._poll_first

    def polled(self, changed: Changes) -> bool:
        """The store was asked (`polls_first`): what other processes changed is read again
        (`heard`). True: the cache may answer now."""
        self.heard(changed)
        return True

    def _fresh(self) -> Flow[None]:
        """Before a call reads the cache: on a store other processes write and that does not
        push their changes (a file), ask it whether they changed it; if so, read again."""
        if self._poll_first:
            try:
                changed = yield POLL
            except StoreError:  # it cannot be read now: what is cached is served meanwhile
                changed = False
            self.polled(changed)

    def _live(self, sid: str) -> Flow[tuple[Entry | None, Reason]]:
        entry = self._entries.get(sid)
        if entry is not None and not entry.stale and not entry.expired(self._clock()):
            return entry, Reason.OK
        return (yield from self._fetch(sid))

    def _fetch(self, sid: str) -> Flow[tuple[Entry | None, Reason]]:
        if sid in self._ended:
            return None, Reason.NOT_FOUND
        try:
            record: Record | None = yield Load(sid)
        except StoreError:
            held = self._entries.get(sid)  # marked to be read again, but the store is down:
            if held is None or held.expired(self._clock()):  # the copy held is served
                raise
            return held, Reason.OK
        return self._admit(sid, record, self._clock())

    def _admit(self, sid: str, record: Record | None, now: float) -> tuple[Entry | None, Reason]:
        """Take the store's copy of a session, keeping this process's unwritten changes."""
        if sid in self._ended:
            return None, Reason.NOT_FOUND
        local = self._entries.get(sid)
        unwritten = self.pending.unwritten(sid)
        if (
            record is not None
            and local is not None
            and unwritten is not None
            and unwritten.created
            and not same_creation(record, local.username, local.created_at)
        ):
            record = None  # another server's session under the id our unwritten create claims
        if record is None:
            if local is not None and unwritten is not None and unwritten.created:
                local.stale = False
                fresh = local
            else:
                self.pending.drop(sid)
                self._entries.remove(sid)
                self.slots.release(sid, evicted=True)
                return None, Reason.NOT_FOUND
        else:
            fresh = Entry.from_record(sid, record)
            if local is not None and unwritten is not None:
                fresh.overlay(local, unwritten.changed, unwritten.removed)
            self._entries.install(fresh)
        if fresh.expired(now):
            if unwritten is None:
                self._entries.remove(sid)
            self.slots.release(sid, evicted=True)
            return None, Reason.EXPIRED
        return fresh, Reason.OK

    def _extend(self, entry: Entry, now: float) -> None:
        expires = now + self._idle  # runs on every validate: plain comparisons, no min/max
        absolute = entry.absolute_expires_at
        if absolute is not None and absolute < expires:
            expires = absolute
        if expires > entry.expires_at:
            entry.expires_at = expires

    def _touch_pending(self, entry: Entry) -> bool:
        """True when a touch moved the expiry further than the touch step past what the
        store holds, and nothing else of the session waits to be written."""
        sid = entry.session_id
        return (
            entry.expires_at - entry.stored_expires_at > self._step
            and self.pending.dirty(sid) is None
            and self.pending.has_room(sid)
        )

    def _touch_written(self, entry: Entry) -> int:
        """Queue the write of a touch that is pending (see `_touch_pending`); its sequence
        number, or 0 if none was queued."""
        if not self._touch_pending(entry):
            return 0
        return self._mark(entry.session_id, Dirty())
