"""The engine: every session decision, with no I/O, no threads and no asyncio.

Each public operation is a flow (`requests.Flow`). It yields a request when it needs the
store (`Load`, `LoadUser`, and, when the store offers them, `Ended` and `ClaimSlot`) or
the driver's patience (`WaitForRoom`, `AcquireSlot`, `Pause`), receives the answer, and
returns its result. An operation that changed a session says itself what must follow:
in write-through mode the write (`FlushNow`, whose failure it raises or, for a touch,
leaves to the retries), otherwise a wake-up of the flusher when a flush is due
(`WakeFlusher`). `SessionService` and `AsyncSessionService` only run these flows and do
what they ask, so the policy exists once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pooled_sessions.codec import (
    Delete,
    Operation,
    Record,
    WriteResult,
    check_id,
    check_size,
    check_username,
    encode_attributes,
    is_valid_id,
    same_creation,
    short_id,
)
from pooled_sessions.config import Settings
from pooled_sessions.engine.binding import ClientBinding
from pooled_sessions.engine.entry import Entry, EntryIndex
from pooled_sessions.engine.pending import Dirty, PendingBuffer
from pooled_sessions.engine.pool_policy import SlotLedger
from pooled_sessions.engine.requests import FLUSH_NOW, WAKE_FLUSHER
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
from pooled_sessions.engine.wallclock import never_back
from pooled_sessions.errors import BackPressureError, IdInUseError, StoreError
from pooled_sessions.model import ClientInfo, Reason, Session, ValidationResult

ENDED_MEMORY_SECONDS = 300.0
ClientLike = ClientInfo | Mapping[str, Any] | None


def _id_or_none(session_id: object) -> str | None:
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
    return session_id if is_valid_id(session_id) else None


class Engine:
    """Live sessions, their dirty state, and the flush and cleanup decisions."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        pending: PendingBuffer | None = None,
        offers: StoreOffers = NO_OFFERS,
    ) -> None:
        self.settings = settings
        self.offers = offers
        self._clock = never_back(clock)  # expiry never moves back (wallclock.py)
        self._mono = monotonic
        self._entries = EntryIndex()
        self._ended: dict[str, float] = {}
        self.pending = pending or PendingBuffer(settings)
        self._next_cleanup = monotonic() + settings.cleanup_interval_minutes * 60.0
        self.last_cleanup_at: float | None = None
        self.evicted = 0
        self.slots = SlotLedger(settings.pool, monotonic, shared=offers.claim_slot)
        self._idle, self._step = settings.idle_seconds, settings.touch_step
        self._binding = ClientBinding(settings)

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
        self.pending.mark(sid, self._mono(), Dirty(changed=set(encoded), created=True))
        yield from self._follow(raising=True)
        return sid

    def validate(self, session_id: str, client: ClientLike = None) -> Flow[ValidationResult]:
        """Check a session for a request, and touch it when it is valid."""
        sid = _id_or_none(session_id)
        if sid is None:
            return ValidationResult(False, Reason.INVALID_ID)
        info = self._binding.coerce(client)
        now = self._clock()
        entry = self._entries.get(sid)
        if entry is None or entry.stale or entry.expired(now):
            lapsed = entry is not None and entry.expired(now) and sid not in self._ended
            entry, reason = yield from self._fetch(sid)
            if entry is None:
                # A store that drops expired records itself (Redis) must not change the reason.
                return ValidationResult(False, Reason.EXPIRED if lapsed else reason)
        result = self._validated(entry, info, now)
        if result.valid and self._touch_written(entry):
            yield from self._follow(raising=False)
        return result

    def validate_cached(
        self, session_id: object, client: ClientLike = None
    ) -> ValidationResult | None:
        """`validate` of a cached live session whose touch is not written: no request, and
        nothing follows. None otherwise.

        The drivers' fast path for the most common call: None sends them to `validate`.
        """
        entry = self._entries.get(session_id) if type(session_id) is str else None
        if entry is None or entry.stale:
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
        entry, _ = yield from self._live(sid)
        if entry is None:
            return False
        merged = {k: v for k, v in entry.attributes.items() if k not in remove}
        merged.update(encoded)
        check_size(sid, merged, self.settings.max_session_bytes)
        entry.attributes = merged
        now = self._clock()
        entry.last_accessed_at = now
        self._extend(entry, now)
        removed = {k for k in remove if k not in encoded}
        self.pending.mark(sid, self._mono(), Dirty(changed=set(encoded), removed=removed))
        yield from self._follow(raising=True)
        return True

    def rotate(self, session_id: str) -> Flow[str | None]:
        """Move a live session to a new id (same data); the old id ends. None if not live."""
        sid = _id_or_none(session_id)
        if sid is None:
            return None
        new_id = new_session_id()
        yield from self._room(new_id)
        entry, _ = yield from self._live(sid)
        if entry is None:
            return None
        clone = Entry(
            session_id=new_id,
            username=entry.username,
            attributes=entry.attributes,
            ip=entry.ip,
            user_agent=entry.user_agent,
            created_at=entry.created_at,
            last_accessed_at=entry.last_accessed_at,
            expires_at=entry.expires_at,
            absolute_expires_at=entry.absolute_expires_at,
            stored_expires_at=0.0,
        )
        self.slots.move(sid, clone)
        self._end(entry)
        self._entries.install(clone)
        self.pending.mark(new_id, self._mono(), Dirty(changed=set(clone.attributes), created=True))
        yield from self._follow(raising=True)
        return new_id

    def end(self, session_id: str) -> Flow[bool]:
        """End a session everywhere; True if a live session ended.

        Ends are accepted past the pending bound: refusing a logout is worse than memory.
        """
        sid = _id_or_none(session_id)
        if sid is None:
            return False
        entry, _ = yield from self._live(sid)
        if entry is None:
            return False
        self._end(entry)
        yield from self._follow(raising=True)
        return True

    def sessions_of(self, username: str) -> Flow[list[str]]:
        """Ids of one user's live sessions, oldest first.

        The store's list is the truth for what this engine had written: a cached session
        it no longer lists ended or expired elsewhere (its event may still be on the way).
        """
        check_username(username)
        dirty = self.pending.is_dirty
        written = {s for s in self._entries.by_user.get(username, ()) if not dirty(s)}
        records: Mapping[str, Record] = yield LoadUser(username)
        now = self._clock()
        for sid, record in records.items():
            entry = self._entries.get(sid)
            if entry is None or entry.stale:
                self._admit(sid, record, now)
        for sid in [s for s in self._entries.by_user.get(username, ()) if s not in records]:
            if self._entries[sid].stale or (sid in written and not dirty(sid)):
                self._admit(sid, None, now)  # gone, unless not yet written
        live = [
            self._entries[sid]
            for sid in self._entries.by_user.get(username, ())
            if not self._entries[sid].expired(now) and not self._entries[sid].stale
        ]
        return [e.session_id for e in sorted(live, key=lambda e: (e.created_at, e.session_id))]

    # -- store feedback ----------------------------------------------------------------

    def invalidate(self, session_ids: Collection[str] | None, *, ended: bool = False) -> None:
        """Another process changed (or, with ``ended``, ended) these sessions; None: all."""
        targets = list(self._entries) if session_ids is None else session_ids
        mono = self._mono()
        for sid in targets:
            if ended:
                self.slots.release(sid, evicted=True)
                self._ended[sid] = mono
                self.pending.drop(sid)
                self._entries.remove(sid)
            elif self.pending.is_dirty(sid):
                if sid in self._entries:
                    self._entries[sid].stale = True
            else:
                self._entries.remove(sid)

    def take_flush(self) -> Flush | None:
        """Every pending change as one batch, or None when nothing is pending."""
        if not len(self.pending):
            return None
        taken = self.pending.take()
        operations: list[Operation] = []
        for sid, dirty in taken.items():
            if dirty.ended_at is not None:
                operations.append(Delete(sid, dirty.username, dirty.ended_at))
            elif (entry := self._entries.get(sid)) is not None:
                moved = self.slots.stored_as(sid) if dirty.created else ()
                operations.append(entry.upsert(dirty.changed, dirty.removed, dirty.created, moved))
        return Flush(operations, taken)

    def flush_succeeded(self, flush: Flush, result: WriteResult, seconds: float) -> None:
        """The store holds ``flush``; note what it refused, found taken or reloaded."""
        self.pending.settle(flush.taken, seconds)
        for op in flush.operations:
            if isinstance(op, Delete):
                self.slots.end_stored(op.session_id)
            elif (entry := self._entries.get(op.session_id)) is not None:
                entry.stored_expires_at = max(entry.stored_expires_at, op.expires_at)
        if result.refused or result.taken:
            # A taken id is another user's session: ours never existed in the store, and a
            # request here with that id comes from our user, so it is refused here as ended.
            self.invalidate(result.refused | result.taken, ended=True)
        if result.reloaded:
            self.invalidate(None)

    def flush_failed(self, flush: Flush, error: BaseException) -> float:
        """Keep a failed batch pending; returns the delay before the retry."""
        for op in flush.operations:
            sid = op.session_id
            if not isinstance(op, Delete) and sid not in self._entries and sid not in self._ended:
                self._entries.install(Entry.from_upsert(op))
        return self.pending.restore(flush.taken, self._mono(), error)

    # -- scheduling --------------------------------------------------------------------

    def flush_due(self) -> bool:
        """True when the batch threshold or the save delay says flush now."""
        return self.pending.due(self._mono())

    def cleanup_due(self) -> bool:
        """True when the periodic cleanup should run."""
        return self._mono() >= self._next_cleanup

    def next_deadline(self) -> float:
        """Monotonic time of the next flush or cleanup the driver must wake up for."""
        flush_at = self.pending.deadline()
        return self._next_cleanup if flush_at is None else min(flush_at, self._next_cleanup)

    def cleanup(self) -> int:
        """Drop expired sessions that have nothing to write; returns how many."""
        now, mono = self._clock(), self._mono()
        expired = [
            sid
            for sid, e in self._entries.items()
            if e.expired(now) and not self.pending.is_dirty(sid)
        ]
        for sid in expired:
            self._entries.remove(sid)
        self.slots.sweep(self._entries, now)
        horizon = mono - ENDED_MEMORY_SECONDS
        dirty = self.pending.is_dirty  # an end the store has not confirmed is never forgotten
        self._ended = {sid: t for sid, t in self._ended.items() if t > horizon or dirty(sid)}
        self._next_cleanup = mono + self.settings.cleanup_interval_minutes * 60.0
        self.last_cleanup_at = now
        self.evicted += len(expired)
        return len(expired)

    def stats(self) -> dict[str, Any]:
        """Engine counters for `SessionService.stats`."""
        flush = self.pending.stats
        return {
            "live_sessions": len(self._entries),
            "pending_changes": self.pending.changes,
            "pending_sessions": len(self.pending),
            "inflight_sessions": self.pending.in_flight,
            "changes": flush.changes,
            "flushes": flush.flushes,
            "store_writes": flush.flushes + flush.failures,
            "sessions_written": flush.sessions_written,
            "writes_saved": flush.changes - flush.sessions_written - self.pending.changes,
            "flush_failures": flush.failures,
            "flush_retries": flush.retries,
            "flush_mean_seconds": flush.mean_seconds,
            "flush_max_seconds": flush.max_seconds,
            "last_error": flush.last_error,
            "last_cleanup_at": self.last_cleanup_at,
            "expired_evicted": self.evicted,
            "pool": self.slots.stats(),
        }

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
        record: Record | None = yield Load(sid)
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

    def _touch_written(self, entry: Entry) -> bool:
        """Queue the write of a touch that is pending (see `_touch_pending`); True if queued."""
        if not self._touch_pending(entry):
            return False
        self.pending.mark(entry.session_id, self._mono(), Dirty())
        return True

    def _follow(self, *, raising: bool) -> Flow[None]:
        """What follows a change: write-through writes it before the call returns, else the
        flusher is woken when a flush is due.

        ``raising``: the caller's own change, whose failed write fails the call (it stays
        pending and is retried); a touch's failed write is left to the retries.
        """
        if not self.settings.write_through:
            if self.flush_due():
                yield WAKE_FLUSHER
        elif raising:
            yield FLUSH_NOW
        elif self.flush_due():
            try:
                yield FLUSH_NOW
            except StoreError:
                pass

    def _end(self, entry: Entry) -> None:
        sid = entry.session_id
        self._entries.remove(sid)
        self.slots.release(sid)
        self._ended[sid] = self._mono()
        change = Dirty(ended_at=self._clock(), username=entry.username)
        self.pending.mark(sid, self._mono(), change)
