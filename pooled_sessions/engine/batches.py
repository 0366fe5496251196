"""The engine's state and what flushes do with it: batches taken, settled, failed or undone;
invalidation by other processes; cleanup; when the flusher wakes; the counters.

`Batches` is the base of `Engine` (engine.py), which adds the public operations as flows.
No I/O, no threads, no asyncio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, Self

from pooled_sessions.codec import Changes, Delete, Operation, WriteResult, short_id
from pooled_sessions.config import Settings
from pooled_sessions.engine.binding import ClientBinding
from pooled_sessions.engine.commits import CommitLog, Gone
from pooled_sessions.engine.entry import Entry, EntryIndex
from pooled_sessions.engine.pending import Dirty, PendingBuffer
from pooled_sessions.engine.requests import (
    FLUSH_NOW,
    NO_OFFERS,
    WAKE_FLUSHER,
    Commit,
    Flow,
    Flush,
    StoreOffers,
)
from pooled_sessions.engine.slot_ledger import SlotLedger
from pooled_sessions.engine.wallclock import never_back
from pooled_sessions.errors import IdInUseError, StoreError

ENDED_MEMORY_SECONDS = 300.0


class Batches:
    """Live sessions, their unwritten changes, and what each flush settles."""

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
        self.commits = CommitLog()
        self._poll_first = settings.commits and not offers.watch
        self._next_cleanup = monotonic() + settings.cleanup_interval_minutes * 60.0
        self.last_cleanup_at: float | None = None
        self.evicted = 0
        self.slots = SlotLedger(settings.pool, monotonic, shared=offers.claim_slot)
        self._idle, self._step = settings.idle_seconds, settings.touch_step
        self._binding = ClientBinding(settings)

    def forked(self) -> Self:
        """A fresh engine for a child process after ``fork()``: the parent's cache, pending
        changes and slots stay the parent's (it writes what it owes); ids ended here stay
        refused."""
        child = type(self)(
            self.settings, clock=self._clock, monotonic=self._mono, offers=self.offers
        )
        child._ended = dict(self._ended)
        return child

    @property
    def live_sessions(self) -> int:
        """Sessions held in memory (what `stats` reports as ``live_sessions``)."""
        return len(self._entries)

    # -- store feedback ----------------------------------------------------------------

    def invalidate(self, session_ids: Collection[str] | None, *, ended: bool = False) -> bool:
        """Another process changed (or, with ``ended``, ended) these sessions; None: all.
        True if a pending change was dropped (room for more): only then has a waiting
        caller anything new to look at."""
        targets = list(self._entries) if session_ids is None else session_ids
        mono = self._mono()
        dropped = False
        for sid in targets:
            if ended:
                self.slots.release(sid, evicted=True)
                self._ended[sid] = mono
                dropped = self.pending.drop(sid) or dropped
                self._entries.remove(sid)
            elif self.pending.is_dirty(sid):
                if sid in self._entries:
                    self._entries[sid].stale = True
            else:
                self._entries.remove(sid)
        return dropped

    def heard(self, changes: Changes) -> None:
        """Other processes changed these sessions (True: any of them, see `Changes`): what
        is cached of them is read again."""
        if changes:
            self.invalidate(None if changes is True else changes)

    def take_flush(self) -> Flush | None:
        """Every pending change as one batch, or None when nothing is pending."""
        if not len(self.pending):
            if not self.commits.flushing:
                self.commits.idle()
            return None
        taken = self.pending.take()
        operations: list[Operation] = []
        for sid, dirty in taken.items():
            if dirty.ended_at is not None:
                operations.append(Delete(sid, dirty.username, dirty.ended_at))
            elif (entry := self._entries.get(sid)) is not None:
                moved = self.slots.stored_as(sid) if dirty.created else ()
                succeeds = dirty.succeeds if dirty.created else None
                operations.append(
                    entry.upsert(dirty.changed, dirty.removed, dirty.created, moved, succeeds)
                )
        return Flush(operations, taken, self.commits.begin())

    def flush_succeeded(self, flush: Flush, result: WriteResult, seconds: float) -> None:
        """The store holds ``flush``; note what it refused, found taken or reloaded."""
        self.pending.settle(flush.taken, seconds)
        self._refuse(flush, result.refused | result.taken)
        self.commits.end(flush.upto)
        for op in flush.operations:
            if isinstance(op, Delete):
                self.slots.end_stored(op.session_id)
            elif (entry := self._entries.get(op.session_id)) is not None:
                entry.stored_expires_at = max(entry.stored_expires_at, op.expires_at)
        if result.refused or result.taken:
            # A taken id is another user's session: ours never existed in the store, and a
            # request here with that id comes from our user, so it is refused here as ended.
            self.invalidate(result.refused | result.taken, ended=True)
        self.heard(result.reloaded)

    def _refuse(self, flush: Flush, ids: Collection[str]) -> None:
        """Changes the store refused: the caller of a create (its id live under another
        creation, or ended) raises `IdInUseError` rather than returning the id; the caller
        of a change to a session the store no longer holds, or of a rotation of one, hears
        that it was not live."""
        for sid in ids:
            dirty = flush.taken.get(sid)
            if dirty is None:
                continue
            if dirty.created and dirty.rotated_from is None:
                error: Exception = IdInUseError(f"session id {short_id(sid)} is already in use")
            else:
                error = Gone(sid)
            self.commits.refuse(dirty.seqs, error)

    def flush_failed(
        self, flush: Flush, error: BaseException, told: BaseException | None = None
    ) -> float:
        """A batch failed: by default its creations and changes are undone (their callers
        raise ``told``, or ``error``) and its touches and ends stay pending; with
        ``write_behind`` all of it stays pending. Returns the delay before the retry of
        what stays."""
        later: list[int] = []
        if self.settings.commits:
            later = self._undo(flush)
        else:
            for op in flush.operations:
                sid = op.session_id
                if not isinstance(op, Delete) and sid not in self._entries:
                    if sid not in self._ended:
                        self._entries.install(Entry.from_upsert(op))
        self.commits.end(flush.upto, error if told is None else told, later)
        return self.pending.restore(flush.taken, self._mono(), error)

    def _undo(self, flush: Flush) -> list[int]:
        """Undo the creations and changes of a failed batch (taken out of ``flush.taken``).

        A created session is gone; a changed one is put back as it was before the change,
        and a rotation's old id lives again, both marked to be read again from the store
        (the write may have reached it though it failed). Returns the numbers of later
        changes to them, dropped too: they were made on top of what is undone.
        """
        later: list[int] = []
        for sid in [sid for sid, dirty in flush.taken.items() if dirty.substantive]:
            dirty = flush.taken.pop(sid)
            later += self.pending.undo(sid)
            old, before = dirty.rotated_from, dirty.before
            if old is not None:  # a rotation: its end of the old id is undone with it
                if flush.taken.pop(old, None) is not None:
                    later += self.pending.undo(old)
                self._ended.pop(old, None)
            self._entries.remove(sid)
            if before is None:
                if dirty.created:
                    self.slots.release(sid, evicted=True)
                continue
            before.stale = True
            self._entries.install(before)
            if old is not None:
                self.slots.move(sid, before)
        return later

    def _follow(self, seq: int, *, raising: bool) -> Flow[bool]:
        """What follows change ``seq``: by default the caller's own change is committed
        before the call returns; a touch (and, with ``write_behind``, every change) waits
        for the flusher, woken when a flush is due, unless write-through writes it now.

        ``raising``: the caller's own change, whose failed write fails the call (undone by
        default, kept pending with ``write_behind``); a touch's failed write is left to
        the retries. False when the store refused the change because the session is gone.
        """
        if raising and self.settings.commits:
            self.commits.watch(seq)  # from here a failed flush is kept for this caller
            try:
                yield Commit(seq)
            except Gone:
                return False
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
        return True

    def _mark(self, session_id: str, change: Dirty) -> int:
        """Record one change for the next flush; returns its sequence number."""
        seq = self.commits.next()
        change.seqs.append(seq)
        self.pending.mark(session_id, self._mono(), change)
        return seq

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
            "live_sessions": self.live_sessions,
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
            "store_ok": not self.pending.failing,
            "unwritten_ends": len(self.pending.ended_ids()),
            "last_cleanup_at": self.last_cleanup_at,
            "expired_evicted": self.evicted,
            "pool": self.slots.stats(),
        }
