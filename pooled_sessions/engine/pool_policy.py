"""Pool policy: live-session slots, first-come-first-served waiters, idle objects, statistics.

Pure: no threads, no I/O, no asyncio; times are monotonic seconds passed in by the caller.
`SessionPool` (threads) and the engine behind both services use it, so the rules of the
pool exist once. A driver only waits for a `SlotTicket` to be granted, with its own
primitives, and wakes the waiter through ``ticket.waker``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from pooled_sessions.config import PoolLimits
from pooled_sessions.errors import PoolExhaustedError

T = TypeVar("T")


class SlotTicket:
    """One request for a live-session slot; ``granted`` turns True when the pool hands one over.

    ``waker`` is set by the driver that waits for the ticket. The policy calls it, with no
    arguments and at most once, from the code that freed the slot (under the sync driver's
    lock, or on the asyncio driver's event loop); it must not raise.
    """

    __slots__ = ("since", "granted", "waker")

    def __init__(self, since: float) -> None:
        self.since = since
        self.granted = False
        self.waker: Callable[[], None] | None = None


_GRANTED = SlotTicket(0.0)
_GRANTED.granted = True  # shared by every request granted at once: it never waits


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """A consistent snapshot of the pool's counters (also readable as ``stats["active"]``).

    ``active == borrowed - returned - evicted`` and ``created == active + idle + discarded``
    whenever no borrow is half-way (granted a slot, object not yet handed out).
    """

    max_total: int
    created: int
    borrowed: int
    returned: int
    discarded: int
    evicted: int
    timeouts: int
    active: int
    idle: int
    waiting: int
    mean_wait_seconds: float
    max_wait_seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (for ``SessionService.stats()`` and JSON)."""
        return asdict(self)

    def __getitem__(self, name: str) -> Any:
        if name not in _STAT_NAMES:
            raise KeyError(name)
        return getattr(self, name)


_STAT_NAMES = frozenset(PoolStats.__dataclass_fields__)


class PoolPolicy(Generic[T]):
    """The pool's decisions: who gets a slot, in which order, and which idle objects to keep.

    Slots bound the objects out on loan (``max_total``). A request that finds none free
    queues behind earlier ones (no barging); each freed slot goes to the oldest waiter.
    Returned objects are kept idle up to ``max_idle`` (the engine keeps none).
    """

    def __init__(self, limits: PoolLimits, *, max_idle: int = 0, min_idle: int = 0) -> None:
        self.limits = limits
        self.max_idle, self.min_idle = max_idle, min_idle
        self._waiters: deque[SlotTicket] = deque()
        self._idle: deque[T] = deque()
        self.active = 0
        self.created = self.borrowed = self.returned = 0
        self.discarded = self.evicted = self.timeouts = 0
        self._wait_total = self._wait_max = 0.0

    @property
    def full(self) -> bool:
        """True when every slot is taken."""
        return self.active >= self.limits.max_total

    # -- slots -------------------------------------------------------------------------

    def request(self, mono: float) -> SlotTicket:
        """Ask for a slot: granted at once if one is free and nobody waits, else queued."""
        if not self._waiters and self.active < self.limits.max_total:
            self.active += 1  # the hot path: no wait to record, no ticket to build
            self.borrowed += 1
            return _GRANTED
        ticket = SlotTicket(mono)
        self._waiters.append(ticket)
        return ticket

    def withdraw(self, ticket: SlotTicket, mono: float) -> None:
        """A waiter gives up: it leaves the queue, or gives back a slot granted too late."""
        if ticket.granted:
            self.release(mono)
            return
        try:
            self._waiters.remove(ticket)
        except ValueError:
            return
        self.timeouts += 1

    def release(self, mono: float, *, evicted: bool = False) -> None:
        """A slot comes back (``evicted``: taken back by the pool); the oldest waiter gets it."""
        if self.active <= 0:
            raise RuntimeError("pool slot released more often than granted")
        self.active -= 1
        if evicted:
            self.evicted += 1
        else:
            self.returned += 1
        if self._waiters and not self.full:
            self._grant(self._waiters.popleft(), mono)

    def refund(self, mono: float) -> None:
        """Give back a granted slot unused (a limit beyond this pool refused the borrow):
        counted neither as borrowed nor as returned; the oldest waiter gets it."""
        self.release(mono)
        self.returned -= 1
        self.borrowed -= 1

    def _grant(self, ticket: SlotTicket, mono: float) -> None:
        self.active += 1
        self.borrowed += 1
        waited = max(0.0, mono - ticket.since)
        self._wait_total += waited
        self._wait_max = max(self._wait_max, waited)
        ticket.granted = True
        if ticket.waker is not None:
            ticket.waker()

    # -- objects -----------------------------------------------------------------------

    def pop_idle(self) -> T | None:
        """The most recently returned idle object (warmest first), or None."""
        return self._idle.pop() if self._idle else None

    def push_idle(self, obj: T) -> bool:
        """Keep a returned object for reuse; False (the caller discards it) past ``max_idle``."""
        if len(self._idle) >= self.max_idle:
            return False
        self._idle.append(obj)
        return True

    def trim_idle(self) -> list[T]:
        """Idle objects beyond ``max_idle``, oldest first; the caller discards them."""
        excess = len(self._idle) - self.max_idle
        return [self._idle.popleft() for _ in range(max(0, excess))]

    def idle_shortfall(self) -> int:
        """Objects to create to bring the idle list up to ``min_idle``, within ``max_total``."""
        room = self.limits.max_total - self.active - len(self._idle)
        return max(0, min(self.min_idle - len(self._idle), room))

    def drain_idle(self) -> list[T]:
        """Remove and return every idle object (the pool is closing)."""
        drained = list(self._idle)
        self._idle.clear()
        return drained

    def stats(self) -> PoolStats:
        """A snapshot of every counter."""
        return PoolStats(
            max_total=self.limits.max_total,
            created=self.created,
            borrowed=self.borrowed,
            returned=self.returned,
            discarded=self.discarded,
            evicted=self.evicted,
            timeouts=self.timeouts,
            active=self.active,
            idle=len(self._idle),
            waiting=len(self._waiters),
            mean_wait_seconds=self._wait_total / self.borrowed if self.borrowed else 0.0,
            max_wait_seconds=self._wait_max,
        )


def exhausted(max_total: int, waited: float, *, shared: bool = False) -> PoolExhaustedError:
    """The error for a borrow that found no free slot within its wait (``shared``: the limit
    counts the live sessions of every app server sharing the store)."""
    where = " across every app server sharing the store" if shared else ""
    return PoolExhaustedError(
        f"session pool exhausted: all {max_total} live-session slots (max_total) are in use"
        f"{where} and none became free within {waited:g} s (max_wait)"
    )


class AcquireSlot(NamedTuple):
    """Engine request: every live-session slot is taken; wait for ``ticket`` to be granted.

    The driver sets ``ticket.waker`` to a no-argument callable that wakes the waiting
    caller, waits until ``ticket.granted`` is True or ``timeout`` seconds (the pool's
    ``max_wait``) have passed, then resumes the operation; the value it sends is ignored.
    The engine reads ``ticket.granted`` itself, so a grant that lands just after the wait
    timed out still counts, and an ungranted ticket is withdrawn and `PoolExhaustedError`
    raised. A driver that abandons the wait closes the operation (or throws into it); the
    engine then withdraws the ticket or gives back a slot granted meanwhile.
    """

    ticket: SlotTicket
    timeout: float


def acquire(
    policy: PoolPolicy[Any], monotonic: Callable[[], float], timeout: float
) -> Generator[AcquireSlot, Any, None]:
    """Take one slot of ``policy``; yields one `AcquireSlot` when the caller must wait."""
    ticket = policy.request(monotonic())
    if not ticket.granted:
        yield from await_ticket(policy, ticket, monotonic, timeout)


def await_ticket(
    policy: PoolPolicy[Any], ticket: SlotTicket, monotonic: Callable[[], float], timeout: float
) -> Generator[AcquireSlot, Any, None]:
    """Wait (through the driver) for a queued ``ticket``; `PoolExhaustedError` if it stays queued.

    Closing or throwing into the generator while it waits withdraws the ticket, or gives
    back a slot granted meanwhile.
    """
    try:
        yield AcquireSlot(ticket, float(timeout))
    except BaseException:
        policy.withdraw(ticket, monotonic())
        raise
    if not ticket.granted:
        policy.withdraw(ticket, monotonic())
        raise exhausted(policy.limits.max_total, timeout)
