"""Group commit: which changes the store holds, and who writes the next batch.

Every change the engine records gets a sequence number. A flush takes everything pending,
up to the latest number; when it ends, every change up to that number is settled:
committed, or, when the flush failed, refused to the callers that wait for it. A caller
that must not return before its change is committed asks `CommitLog.verdict`: committed,
wait for the flush in flight, or lead the next flush itself (it takes every pending change,
so calls arriving meanwhile share it). When a flush ends, the log names the caller that
leads the next one, so a driver wakes only the callers whose turn came (`waits`), not every
waiter to race for the lead. Pure bookkeeping: no I/O, no threads.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from pooled_sessions.errors import StoreUnavailableError


class Gone(Exception):
    """The store refused a change because it no longer holds the session (ended or gone
    elsewhere): the change is moot, and its caller answers as for a session not live."""


class Turn(enum.Enum):
    """What a caller waiting for its change does next."""

    COMMITTED = "committed"
    WAIT = "wait"  # a flush is in flight: wait for it to end, then ask again
    LEAD = "lead"  # no flush is in flight: flush everything pending now


class CommitLog:
    """Sequence numbers of changes, the flush in flight, and the failures callers must hear."""

    def __init__(self) -> None:
        self.last = 0
        """The number of the latest change."""
        self.settled = 0
        """Every change up to this number was handed to a flush that ended (or dropped)."""
        self.flushing = False
        """A flush is in flight; there is never more than one."""
        self.leader = 0
        """The change whose caller was told to lead the next flush, until that flush begins."""
        self.named = 0
        """The earliest change still waiting when a flush ended: its caller is woken to lead
        the next one, unless a caller already running asks first (no wait for a wake-up)."""
        self.rounds = 0
        """Flushes ended (and leads given up): a waiter waits for this to move."""
        self._watched: set[int] = set()
        self._failed: dict[int, BaseException] = {}

    def next(self) -> int:
        """The number of a new change."""
        self.last += 1
        return self.last

    @property
    def busy(self) -> bool:
        """A flush is in flight, or a caller is about to start one: wait for it."""
        return self.flushing or self.leader != 0

    def begin(self) -> int:
        """A flush takes every pending change; returns the number it covers up to."""
        self.flushing, self.leader, self.named = True, 0, 0
        return self.last

    def idle(self) -> None:
        """Nothing is pending and no flush is in flight: every change so far is settled."""
        self.settled = self.last

    def end(
        self, upto: int, error: BaseException | None = None, also: Collection[int] = ()
    ) -> None:
        """The flush that covered changes up to ``upto`` ended; ``error`` if it failed.

        A failure is kept for every watched change it covered, and for ``also`` (later
        changes undone with the ones that failed).
        """
        if error is not None:
            failure = error if isinstance(error, Exception) else _cancelled(error)
            for seq in self._watched:
                if self.settled < seq <= upto or seq in also:
                    self._failed[seq] = failure
        self.settled = max(self.settled, upto)
        self.flushing = False
        self.rounds += 1
        if not self.leader:
            self.named = self._next_leader()

    def refuse(self, seqs: Collection[int], failure: Exception) -> None:
        """The store refused these changes (a create of an id in use, a change of a session
        gone): their callers raise ``failure`` instead of hearing that they were committed."""
        for seq in seqs:
            if seq in self._watched:
                self._failed[seq] = failure

    def watch(self, seq: int) -> None:
        """A caller waits for change ``seq``: keep the failure of its flush for it."""
        self._watched.add(seq)

    def forget(self, seq: int) -> None:
        """The caller of change ``seq`` stopped waiting."""
        self._watched.discard(seq)
        self._failed.pop(seq, None)

    def verdict(self, seq: int) -> Turn:
        """What the caller of change ``seq`` does next; raises the failure of its flush.

        One caller at a time is told to lead: the others wait until its flush has ended.
        """
        failure = self._failed.pop(seq, None)
        if failure is not None:
            raise _again(failure)
        if seq <= self.settled:
            return Turn.COMMITTED
        if self.busy:
            return Turn.WAIT
        self.leader, self.named = seq, 0
        return Turn.LEAD

    def waits(self, seq: int) -> bool:
        """True while the caller of ``seq`` has nothing to do but wait: a driver wakes a
        waiting caller once this turns False (settled, failed, or named to lead)."""
        return (
            seq > self.settled
            and seq not in self._failed
            and (self.busy or self.named not in (0, seq))
        )

    def stand_down(self, seq: int) -> bool:
        """The caller of ``seq`` no longer leads, nor is named to (its flush began, or it
        failed or left first); True if it still was, so the next waiting caller is named
        and the driver must wake it."""
        if seq not in (self.leader, self.named):
            return False
        if self.leader == seq:
            self.leader = 0
        self.named = self._next_leader(seq)
        self.rounds += 1
        return True

    def _next_leader(self, leaving: int = 0) -> int:
        """The earliest change still waiting for a flush (0: none), to lead the next one."""
        waiting = [
            seq
            for seq in self._watched
            if seq > self.settled and seq != leaving and seq not in self._failed
        ]
        return min(waiting, default=0)


def _cancelled(error: BaseException) -> Exception:
    """What the callers of a flush cancelled from outside hear (not the cancellation)."""
    return StoreUnavailableError(f"the write was interrupted ({type(error).__name__})")


def _again(error: BaseException) -> BaseException:
    """A fresh copy of ``error`` for one caller: several callers may raise one failure."""
    try:
        copy = type(error)(*error.args)
    except Exception:  # an exception type with another constructor: raise the original
        return error
    copy.__cause__ = error.__cause__
    return copy
