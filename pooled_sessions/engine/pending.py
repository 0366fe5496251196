"""The write-behind buffer: which sessions are dirty, coalesced per session, and when to flush.

Pure policy: no I/O, no threads. Times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pooled_sessions.config import Settings
from pooled_sessions.engine.entry import Entry


@dataclass(slots=True, kw_only=True)
class Dirty:
    """What changed in one session since its last write."""

    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    created: bool = False
    ended_at: float | None = None
    username: str = ""
    rotated_from: str | None = None
    """Set on the creation of a rotated id: the id whose end is part of the same change."""
    succeeds: str | None = None
    """``rotated_from`` when the store held that id (`Upsert.succeeds`): the new id is
    written only if the store still held it. None when that id was never written (its
    creation still pending): there is nothing in the store to check."""
    before: Entry | None = None
    """The session as it was before the first change folded in (to undo a failed commit);
    for a rotated id, the old id's."""
    seqs: list[int] = field(default_factory=list)
    """Sequence numbers of the changes folded in (see `CommitLog`)."""

    @property
    def substantive(self) -> bool:
        """True for a creation or a change of attributes (not a touch, not an end)."""
        return self.ended_at is None and bool(self.created or self.changed or self.removed)

    def absorb(self, newer: Dirty) -> None:
        """Fold a later change of the same session into this one (later wins per key)."""
        if newer.ended_at is not None:
            self.ended_at, self.username = newer.ended_at, newer.username
        self.changed = (self.changed - newer.removed) | newer.changed
        self.removed = (self.removed - newer.changed) | newer.removed
        self.created = self.created or newer.created
        self.rotated_from = self.rotated_from or newer.rotated_from
        self.succeeds = self.succeeds or newer.succeeds
        self.before = self.before or newer.before
        self.seqs += newer.seqs


@dataclass(slots=True, kw_only=True)
class FlushStats:
    """Counters in the spirit of Commons Pool's statistics."""

    changes: int = 0
    flushes: int = 0
    sessions_written: int = 0
    failures: int = 0
    retries: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    last_error: str | None = None

    @property
    def mean_seconds(self) -> float:
        """Mean duration of a successful flush."""
        return self.total_seconds / self.flushes if self.flushes else 0.0


class PendingBuffer:
    """Dirty sessions waiting for a flush; decides when a flush is due."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._dirty: dict[str, Dirty] = {}
        self._inflight: dict[str, Dirty] = {}
        self._events = 0
        self._first_at: float | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._end_waiting = False
        self.prompt_ends = False
        """Write an end at once (set by drivers of stores shared with other servers, so
        those refuse the session within milliseconds, not after the save delay)."""
        self.stats = FlushStats()

    def __len__(self) -> int:
        return len(self._dirty)

    @property
    def changes(self) -> int:
        """Changes recorded since the last flush was taken."""
        return self._events

    @property
    def failing(self) -> bool:
        """True while the last flush attempt failed."""
        return self._failures > 0

    @property
    def in_flight(self) -> int:
        """Sessions handed to a flush that has not finished yet."""
        return len(self._inflight)

    def ids(self) -> list[str]:
        """Ids of the sessions with pending (not in-flight) changes."""
        return list(self._dirty)

    def unconfirmed_ids(self) -> list[str]:
        """Ids of the sessions with changes the store has not confirmed: in flight or pending."""
        return list(self._inflight.keys() | self._dirty.keys())

    def is_dirty(self, session_id: str) -> bool:
        """True when the session has a change not yet confirmed by the store."""
        return session_id in self._dirty or session_id in self._inflight

    def dirty(self, session_id: str) -> Dirty | None:
        """The pending change of one session, if any."""
        return self._dirty.get(session_id)

    def unwritten(self, session_id: str) -> Dirty | None:
        """Everything not yet confirmed for one session: in flight, then pending."""
        inflight, pending = self._inflight.get(session_id), self._dirty.get(session_id)
        if inflight is None or pending is None:
            return inflight or pending
        combined = Dirty(
            changed=set(inflight.changed), removed=set(inflight.removed), created=inflight.created
        )
        combined.absorb(pending)
        return combined

    def has_room(self, session_id: str) -> bool:
        """True when a change to ``session_id`` keeps the buffer within its bound.

        Changes in flight count too: a failed flush puts them back.
        """
        if session_id in self._dirty or session_id in self._inflight:
            return True
        return len(self._dirty) + len(self._inflight) < self._settings.max_pending_sessions

    def mark(self, session_id: str, mono: float, change: Dirty) -> None:
        """Record one change; changes to the same session coalesce into one write."""
        current = self._dirty.get(session_id)
        if current is None:
            self._dirty[session_id] = change
        else:
            current.absorb(change)
        self._events += 1
        self.stats.changes += 1
        if change.ended_at is not None:
            self._end_waiting = True
        if self._first_at is None:
            self._first_at = mono

    def drop(self, session_id: str) -> bool:
        """Forget a pending change (its session was ended elsewhere); True if there was one."""
        return self._dirty.pop(session_id, None) is not None

    def undo(self, session_id: str) -> list[int]:
        """Forget every unwritten change of one session, in flight or pending (its write
        failed and is undone); returns the numbers of the pending changes dropped."""
        self._inflight.pop(session_id, None)
        pending = self._dirty.pop(session_id, None)
        return [] if pending is None else pending.seqs

    def ended_ids(self) -> list[str]:
        """Ids of the sessions whose end the store does not hold yet."""
        ids = (
            sid
            for table in (self._inflight, self._dirty)
            for sid, dirty in table.items()
            if dirty.ended_at is not None
        )
        return list(dict.fromkeys(ids))

    def due(self, mono: float) -> bool:
        """True when a flush should run now."""
        if not self._dirty or mono < self._retry_at:
            return False
        if self._urgent():
            return True
        assert self._first_at is not None
        return mono >= self._first_at + self._settings.save_delay_seconds

    def deadline(self) -> float | None:
        """Monotonic time at which a flush becomes due by delay, or None if nothing is pending."""
        if not self._dirty or self._first_at is None:
            return None
        if self._urgent():
            return self._retry_at  # due now, or when the backoff ends
        return max(self._first_at + self._settings.save_delay_seconds, self._retry_at)

    def _urgent(self) -> bool:
        """Flush without waiting for the save delay: threshold reached, buffer full, or retry."""
        return (
            self._events >= self._settings.batch_save_threshold
            or self._failures > 0  # a failed batch is retried as soon as its backoff ends
            or len(self._dirty) + len(self._inflight) >= self._settings.max_pending_sessions
            or (self.prompt_ends and self._end_waiting)
        )

    def take(self) -> dict[str, Dirty]:
        """Hand every pending change to a flush; they count as in flight until settled."""
        taken, self._dirty = self._dirty, {}
        self._inflight.update(taken)
        self._events, self._first_at = 0, None
        self._end_waiting = False
        if self._failures:
            self.stats.retries += 1
        return taken

    def settle(self, taken: dict[str, Dirty], seconds: float) -> None:
        """The store confirmed ``taken``."""
        for session_id in taken:
            self._inflight.pop(session_id, None)
        self._failures, self._retry_at = 0, 0.0
        stats = self.stats
        stats.flushes += 1
        stats.sessions_written += len(taken)
        stats.total_seconds += seconds
        stats.max_seconds = max(stats.max_seconds, seconds)

    def restore(self, taken: dict[str, Dirty], mono: float, error: BaseException) -> float:
        """A flush failed: put its changes back under any newer ones; returns the retry delay.

        They go back ahead of changes made since, so the retry writes in the order the
        changes were made (an end before the login that took its pool slot).
        """
        restored: dict[str, Dirty] = {}
        for session_id, old in taken.items():
            self._inflight.pop(session_id, None)
            newer = self._dirty.get(session_id)
            if newer is not None:
                old.absorb(newer)
            restored[session_id] = old
            self._events += 1
        restored.update((k, v) for k, v in self._dirty.items() if k not in restored)
        self._dirty = restored
        if self._first_at is None and self._dirty:
            self._first_at = mono
        self._failures += 1
        self.stats.failures += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        settings = self._settings
        delay: float = min(
            settings.retry_max_seconds,
            settings.retry_initial_seconds * 2 ** min(self._failures - 1, 30),
        ) * self._rng.uniform(0.75, 1.0)
        self._retry_at = mono + delay
        return delay
