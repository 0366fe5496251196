"""The engine: every session decision, with no I/O, no threads and no asyncio.

Each public operation is a flow (`requests.Flow`). It yields a request when it needs the
store (`Load`, `LoadUser`, `Poll`, and, when the store offers them, `Ended` and
`ClaimSlot`) or the driver's patience (`WaitForRoom`, `AcquireSlot`, `Pause`), receives
the answer, and returns its result. An operation that changed a session says itself what
must follow: by default its commit (`Commit`: the call returns once the store holds the
change, or raises with the change undone); with ``write_behind`` a wake-up of the flusher
when a flush is due (`WakeFlusher`); a touch is written behind, or at once in
write-through mode (`FlushNow`). `SessionService` and `AsyncSessionService` only run
these flows and do what they ask, so the policy exists once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pooled_sessions.codec import (
    Record,
    check_id,
    check_size,
    check_username,
    encode_attributes,
    is_valid_id,
    same_creation,
    short_id,
)
from pooled_sessions.engine.batches import ENDED_MEMORY_SECONDS as ENDED_MEMORY_SECONDS
from pooled_sessions.engine.batches import Batches
from pooled_sessions.engine.entry import Entry
from pooled_sessions.engine.pending import Dirty
from pooled_sessions.engine.requests import FLUSH_NOW, POLL, WAKE_FLUSHER, Commit
from pooled_sessions.engine.requests import NO_OFFERS as NO_OFFERS
from pooled_sessions.engine.requests import AcquireSlot as AcquireSlot
from pooled_sessions.engine.requests import ClaimSlot as ClaimSlot
from pooled_sessions.engine.requests import Ended as Ended
from pooled_sessions.engine.requests import Flow as Flow
from pooled_sessions.engine.requests import Flush as Flush
from pooled_sessions.engine.requests import Load as Load
from pooled_sessions.engine.requests import LoadUser as LoadUser
from pooled_sessions.engine.requests import Pause as Pause
from pooled_sessions.engine.requests import Request as Request
from pooled_sessions.engine.requests import StoreOffers as StoreOffers
from pooled_sessions.engine.requests import WaitForRoom as WaitForRoom
from pooled_sessions.engine.requests import new_session_id as new_session_id
from pooled_sessions.errors import BackPressureError, IdInUseError, StoreError
from pooled_sessions.model import ClientInfo, Reason, Session, ValidationResult

ClientLike = ClientInfo | Mapping[str, Any] | None


def _id_or_none(session_id: object) -> str | None:
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    return session_id if is_valid_id(session_id) else None


class Engine(Batches):
    """Live sessions, their dirty state, and the flush and cleanup decisions.

    The operations below are flows; the state and what flushes settle are `Batches`'.
    """

    # -- public operations -------------------------------------------------------------

    def create(
        self,
        username: str,
        attributes: Mapping[str, Any] | None,
        client: ClientLike,
        session_id: str | None = None,
    ) -> Flow[str]:
        """Start a session; returns its id."""
        check_username(username)
        encoded = encode_attributes({} if attributes is None else attributes)
        info = ClientInfo.coerce(client) or ClientInfo()
        sid = new_session_id() if session_id is None else (yield from self._unused(session_id))
        check_size(sid, encoded, self.settings.max_session_bytes)
        yield from self._room(sid)
        now = self._clock()
        absolute = self.settings.absolute_lifetime_minutes
        first_expiry = (
            now + self._idle if absolute is None else min(now + self._idle, now + absolute * 60.0)
        )
        yield from self.slots.claim(self._entries, now, sid, first_expiry)
        now = self._clock()
        entry = Entry(
            session_id=sid,
            username=username,
            attributes=encoded,
            ip=info.ip,
            user_agent=info.user_agent,
            created_at=now,
            last_accessed_at=now,
            expires_at=0.0,  # set by _extend below
            absolute_expires_at=None if absolute is None else now + absolute * 60.0,
            stored_expires_at=0.0,
        )
        self._extend(entry, now)
        self._entries.install(entry)
        self.slots.hold(entry)
        seq = self._mark(sid, Dirty(changed=set(encoded), created=True))
        yield from self._follow(seq, raising=True)
        return sid

    def validate(self, session_id: str, client: ClientLike = None) -> Flow[ValidationResult]:
        """Check a session for a request, and touch it when it is valid."""
        sid = _id_or_none(session_id)
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
        self, session_id: object, client: ClientLike = None
    ) -> ValidationResult | None:
        """`validate` of a cached live session whose touch is not written: no request, and
        nothing follows. None otherwise.

        The drivers' fast path for the most common call: None sends them to `validate`
        (always, on a store that must be asked for others' changes first).
        """
        entry = self._entries.get(session_id) if type(session_id) is str else None
        if entry is None or entry.stale or self._poll_first:
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
        sid = _id_or_none(session_id)
        if sid is None:
            return None
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        return None if entry is None else entry.snapshot()

    def update(
        self, session_id: str, attributes: Mapping[str, Any], remove: Collection[str] = ()
    ) -> Flow[bool]:
        """Merge attributes into a live session (and drop ``remove``); False if it is not live."""
        encoded = encode_attributes(attributes)
        if isinstance(remove, str) or not all(isinstance(k, str) for k in remove):
            raise TypeError("remove must be a collection of attribute names")
        sid = _id_or_none(session_id)
        if sid is None:
            return False
        yield from self._room(sid)
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        if entry is None:
            return False
        merged = {k: v for k, v in entry.attributes.items() if k not in remove}
        merged.update(encoded)
        check_size(sid, merged, self.settings.max_session_bytes)
        before = entry.copy() if self.settings.commits else None
        entry.attributes = merged
        now = self._clock()
        entry.last_accessed_at = now
        self._extend(entry, now)
        removed = {k for k in remove if k not in encoded}
        seq = self._mark(sid, Dirty(changed=set(encoded), removed=removed, before=before))
        yield from self._follow(seq, raising=True)
        return True

    def rotate(self, session_id: str) -> Flow[str | None]:
        """Move a live session to a new id (same data); the old id ends. None if not live."""
        sid = _id_or_none(session_id)
        if sid is None:
            return None
        new_id = new_session_id()
        yield from self._room(new_id)
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        if entry is None:
            return None
        clone = entry.renamed(new_id)
        self.slots.move(sid, clone)
        self._end(entry)
        self._entries.install(clone)
        created = Dirty(changed=set(clone.attributes), created=True, rotated_from=sid, before=entry)
        seq = self._mark(new_id, created)
        yield from self._follow(seq, raising=True)
        return new_id

    def end(self, session_id: str) -> Flow[bool]:
        """End a session everywhere; True if a live session ended.

        Ends are accepted past the pending bound: refusing a logout is worse than memory.
        """
        sid = _id_or_none(session_id)
        if sid is None:
            return False
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        if entry is None:
            return False
        seq = self._end(entry)
        yield from self._follow(seq, raising=True)
        return True

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

    # -- internals ---------------------------------------------------------------------

    def _unused(self, session_id: str) -> Flow[str]:
        """``session_id`` (minted by a web framework) if no session has it or ever had it."""
        sid = check_id(session_id)
        ended = sid in self._ended
        if not ended and (sid in self._entries or (yield Load(sid)) is not None):
            raise IdInUseError(f"session id {short_id(sid)} is already in use")
        if ended or (self.offers.ended and (yield Ended(sid))):
            raise IdInUseError(
                f"session id {short_id(sid)} is already in use: its session was ended, and an id "
                "is never used twice (mint a new one)"
            )
        return sid

    def _fresh(self) -> Flow[None]:
        """Before a call reads the cache: on a store other processes write and that does not
        push their changes (a file), ask it whether they changed it; if so, read again."""
        if self._poll_first:
            try:
                changed = yield POLL
            except StoreError:  # it cannot be read now: what is cached is served meanwhile
                changed = False
            if changed:
                self.invalidate(None)

    def _room(self, session_id: str) -> Flow[None]:
        if not self.pending.has_room(session_id) and not (yield WaitForRoom(session_id)):
            limit = self.settings.max_pending_sessions
            raise BackPressureError(
                f"{limit} sessions are waiting to be written and the store is not taking "
                f"them ({self.pending.stats.last_error}); try again later"
            )

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

    def _follow(self, seq: int, *, raising: bool) -> Flow[None]:
        """What follows change ``seq``: by default the caller's own change is committed
        before the call returns; a touch (and, with ``write_behind``, every change) waits
        for the flusher, woken when a flush is due, unless write-through writes it now.

        ``raising``: the caller's own change, whose failed write fails the call (undone by
        default, kept pending with ``write_behind``); a touch's failed write is left to
        the retries.
        """
        if raising and self.settings.commits:
            self.commits.watch(seq)  # from here a failed flush is kept for this caller
            try:
                yield Commit(seq)
            finally:
                self.commits.forget(seq)
        elif not self.settings.write_through:
            if self.flush_due():
                yield WAKE_FLUSHER
        elif raising:
            yield FLUSH_NOW
        elif self.flush_due():
            try:
                yield FLUSH_NOW
            except StoreError:
                pass

    def _end(self, entry: Entry) -> int:
        sid = entry.session_id
        self._entries.remove(sid)
        self.slots.release(sid)
        self._ended[sid] = self._mono()
        return self._mark(sid, Dirty(ended_at=self._clock(), username=entry.username))
