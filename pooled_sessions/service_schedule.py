"""When a service's flusher wakes and what it does then, and shutdown's last flushes.

Both services (service.py, service_async.py) keep their timing here, read from their
`Clock`; the flows that act on it are in service_base.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from pooled_sessions.clock import Clock
from pooled_sessions.codec import short_id
from pooled_sessions.config import Settings
from pooled_sessions.engine.engine import Engine
from pooled_sessions.model import ShutdownReport

logger = logging.getLogger("session_service")
FINAL_RETRY_SECONDS = 0.1


class Chores(NamedTuple):
    """What one round of background work does."""

    flush: bool
    cleanup: bool
    poll: bool


class Schedule:
    """When the background flusher wakes, what it does then, and the store-side counters."""

    def __init__(self, settings: Settings, clock: Clock, store: object = None) -> None:
        self._clock = clock
        self._store = store
        self._interval = settings.sync_interval_seconds
        self._next_sync = clock.monotonic() + self._interval
        self.purged = 0

    def wake_at(self, engine: Engine) -> float:
        """Monotonic time of the next round (a flush, a cleanup or a poll of the store)."""
        return min(engine.next_deadline(), self._next_sync)

    def chores(self, engine: Engine) -> Chores:
        """The chores due now; a poll is counted as done from here."""
        now = self._clock.monotonic()
        poll = now >= self._next_sync
        if poll:
            self._next_sync = now + self._interval
        return Chores(engine.flush_due(), engine.cleanup_due(), poll)

    def cleaned(self, evicted: int, purged: int) -> None:
        """Count and log one cleanup."""
        self.purged += purged
        logger.info("cleanup: %d expired session(s) evicted, %d purged", evicted, purged)

    def stats(self, engine: Engine, url: str, *, closed: bool) -> dict[str, Any]:
        """`stats()` of a service: the engine's counters and the store's."""
        stats = engine.stats()
        stats.update(store=url, store_purged=self.purged, closed=closed)
        if hasattr(self._store, "eviction_policy"):  # Redis: its maxmemory-policy
            stats["store_eviction_policy"] = self._store.eviction_policy
        return stats


class FinalFlush:
    """Shutdown's last flushes: retried until nothing is pending or the time is up."""

    def __init__(self, settings: Settings, clock: Clock, timeout: float | None) -> None:
        limit = settings.shutdown_timeout_seconds if timeout is None else timeout
        self._clock = clock
        self.deadline = clock.monotonic() + limit
        self.written = 0
        self.error: str | None = None
        self.unsaved: tuple[str, ...] = ()
        self.ends: tuple[str, ...] = ()

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - self._clock.monotonic())

    def failed(self, error: BaseException) -> None:
        """Note a failed flush attempt."""
        self.error = f"{type(error).__name__}: {error}"

    def timed_out(self) -> None:
        """Note an attempt cut short by the deadline (after any earlier failure)."""
        note = "the write outlasted the shutdown time limit"
        self.error = note if self.error is None else f"{self.error}; then {note}"

    def abandoned(self, session_ids: Sequence[str]) -> ShutdownReport:
        """The report when the deadline passed with a write still running: everything not
        confirmed (``session_ids``, pending or in flight) is unsaved, as far as it can tell."""
        self.unsaved = tuple(short_id(sid) for sid in session_ids)
        self.timed_out()
        return self.report()

    def pause(self, engine: Engine) -> float | None:
        """Seconds to wait before the next attempt, or None when shutdown should report now."""
        self.unsaved = tuple(short_id(sid) for sid in engine.pending.ids())
        self.ends = tuple(short_id(sid) for sid in engine.pending.ended_ids())
        if not self.unsaved or self._clock.monotonic() >= self.deadline:
            return None
        return min(FINAL_RETRY_SECONDS, self.remaining())

    def report(self) -> ShutdownReport:
        """What shutdown wrote, and what it could not (logged as an error)."""
        if self.unsaved and self.error is None:
            self.error = "the shutdown time limit passed before everything was written"
        if self.unsaved:
            logger.error(
                "shutdown could not write %d session(s) (%s): %s",
                len(self.unsaved),
                self.error,
                ", ".join(self.unsaved[:20]),
            )
        if self.ends:
            logger.error(
                "%d ended session(s) stay valid in the store until they expire: their end "
                "was never written: %s",
                len(self.ends),
                ", ".join(self.ends[:20]),
            )
        return ShutdownReport(self.written, self.unsaved, self.error, self.ends)
