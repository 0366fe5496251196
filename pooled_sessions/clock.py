"""The time a service reads: real time by default, or a test's time that can skip ahead.

A service reads one `Clock` for every decision: expiry and the records it writes
(``time()``), and the save delay, cleanup interval, backoff and shutdown limit
(``monotonic()``). Its flusher sleeps until the next of those moments; a clock that jumps
tells its watchers, so a flush or cleanup the jump made due runs at once. The engine never
lets its wall time go back when ``time()`` steps back (`pooled_sessions.engine.wallclock`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Wake = Callable[[], None]


class Clock:
    """Real time: the wall clock for expiry, the monotonic one for delays. It never jumps."""

    def time(self) -> float:
        """Seconds since the epoch (expiry times, and the times a store keeps)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back (delays and deadlines)."""
        return time.monotonic()

    def watch(self, wake: Wake) -> Wake:
        """Call ``wake`` (from any thread) whenever this clock jumps; returns the call that
        stops it."""
        return _ignore


def _ignore() -> None:
    """Stop watching a clock that never jumps: nothing to do."""


REAL_TIME = Clock()


class FastForwardClock(Clock):
    """Real time that a test moves forward with `advance`: a wait it skips costs nothing.

    Time still flows, so whatever waits in real time (a pool slot, room in the buffer,
    the shutdown limit) still ends; ``advance`` adds to both readings at once and wakes
    every watcher (a service's flusher), which then runs what has become due.
    `step_wall` moves the wall clock alone, either way, as NTP or an operator steps a
    server's clock.
    """

    def __init__(self) -> None:
        self._skipped = 0.0
        self._stepped = 0.0
        self._lock = threading.Lock()
        self._watchers: list[Wake] = []

    def time(self) -> float:
        return time.time() + self._skipped + self._stepped

    def monotonic(self) -> float:
        return time.monotonic() + self._skipped

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` ahead, and wake every watcher."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward, not by {seconds!r} s")
        with self._lock:
            self._skipped += seconds
            watchers = list(self._watchers)
        for wake in watchers:
            wake()

    def step_wall(self, seconds: float) -> None:
        """Step ``time()`` by ``seconds`` (back when negative); ``monotonic()`` stays.

        No watcher is woken: the flusher's timers run on the monotonic clock, which did
        not move.
        """
        with self._lock:
            self._stepped += seconds

    def watch(self, wake: Wake) -> Wake:
        with self._lock:
            self._watchers.append(wake)

        def unwatch() -> None:
            with self._lock:
                if wake in self._watchers:
                    self._watchers.remove(wake)

        return unwatch
