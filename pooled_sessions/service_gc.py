"""Long-lived sessions out of the garbage collector's walk: `gc.freeze` after large growth.

Every live session keeps about six container objects alive as long as it lives: the
engine's entry and its user index and, in a memory or file store, the record, its
attributes, their lists and its user index. CPython's full collection walks every
container it tracks and stops every thread meanwhile: at 50,000 sessions about 160 ms of
CPU, which on an event loop is as long without a single answer. These objects form no
reference cycles (reference counting frees them when their session goes), so the
collector's walks over them find nothing.

So once enough sessions came or changed, the asyncio service freezes after a flush:
everything then alive moves to the collector's permanent generation, and later
collections walk only what was made since. `gc.freeze` is process-wide: an object alive
at that moment is still freed by reference counting, but a reference cycle among such
objects is never reclaimed (``gc.unfreeze()`` hands them all back), which is why the
young generations are collected first and why a service freezes only past
`FREEZE_FROM` live sessions, once per `FREEZE_EVERY` sessions written or loaded.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pooled_sessions.engine import Engine

FREEZE_FROM = 10_000
"""Live sessions below which a service never freezes (a full collection stays short)."""

FREEZE_EVERY = 2_000
"""Sessions written or newly held since the last freeze before the next: what later
collections walk again stays below about 12,000 containers of this service's."""


class Freezer:
    """When a service moves what is alive out of the collector's walk."""

    __slots__ = ("_live", "_written")

    def __init__(self) -> None:
        self._live = self._written = 0

    def after_flush(self, engine: Engine) -> None:
        """Freeze if the engine's sessions grew or changed enough since the last freeze."""
        live, written = engine.live_sessions, engine.pending.stats.sessions_written
        fresh = max(written - self._written, live - self._live)  # a creation is both
        if live >= FREEZE_FROM and fresh >= FREEZE_EVERY:
            gc.collect(1)  # the garbage of the moment is not made permanent
            gc.freeze()
            self._live, self._written = live, written
