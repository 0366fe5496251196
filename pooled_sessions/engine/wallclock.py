"""The wall clock as the engine reads it: never earlier than a time it has already read.

Expiry compares wall times: a session's ``expires_at`` (what every store keeps, and what
every process sharing the store compares with) against now. A wall clock stepped back
(NTP correcting a clock, a restored VM, an operator) would make a session that expired
live again, and a process would write times earlier than those it wrote before.

So the engine's now is the latest wall time it has read: a step back holds it where it
was until the wall clock catches up, and a step forward is followed at once. Expiry
only ever moves forward, so whatever this process has seen expire stays expired, from
its cache or reloaded from the store; the times it writes never move back; and while
its clock is behind it extends no session past where it could before the step. Forward
steps are followed rather than ignored because the stores and the other processes judge
expiry by the wall clock too: a step forward expires exactly the sessions whose expiry
the wall clock has passed, as every other reader of the store will judge them.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class NeverBack:
    """A wall clock reading that never goes back: the latest of all readings so far."""

    __slots__ = ("_read", "_latest")

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self._latest = -math.inf

    def now(self) -> float:
        """The wall time, or the latest one read before if the clock stepped back since."""
        wall = self._read()
        if wall < self._latest:
            return self._latest
        self._latest = wall
        return wall
