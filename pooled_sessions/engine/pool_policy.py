"""Pool policy: live-session slots, first-come-first-served waiters, idle objects, statistics.

Pure: no threads, no I/O, no asyncio; times are monotonic seconds passed in by the caller.
`SessionPool` (threads) and the engine behind both services use it, so the rules of the
pool exist once. A driver only waits for a `SlotTicket` to be granted, with its own
primitives, and wakes the waiter through ``ticket.waker``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

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


# -- the engine's side -----------------------------------------------------------------


class Expiring(Protocol):
    """What the ledger needs of a live session."""

    @property
    def session_id(self) -> str: ...

    def expired(self, now: float) -> bool: ...


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


class ClaimSlot(NamedTuple):
    """Engine request (a store shared by several app servers, offering ``claim_slot``):
    take one of ``limit`` slots counted across every server for ``session_id``, which
    expires at ``expires_at``. The driver answers with ``store.claim_slot(...)``: True if
    granted. Sent after this server's own slot was granted.

    ``replaces``: sessions this server ended whose end the store may not have yet; the
    store hands the slot of one of them over rather than counting it, so a slot an end
    frees here is usable here at once (and the local waiters keep their order).
    """

    session_id: str
    expires_at: float
    limit: int
    replaces: tuple[str, ...] = ()


class Pause(NamedTuple):
    """Engine request: wait ``seconds`` (the driver sleeps its own way), then resume."""

    seconds: float


SHARED_RETRY_SECONDS = (0.005, 0.1)
"""First and longest pause between two claims of a shared slot (no event says one freed)."""
FREED_KEPT = 256
"""Ids of sessions ended here, remembered until the store confirms their end."""


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


class SlotLedger:
    """The engine's live-session slots: which sessions hold one, over one `PoolPolicy`.

    A session created by this engine holds a slot until it ends, expires or is evicted
    (ended elsewhere, or gone from the store). Without a pool configuration nothing is
    counted or capped. `claim` and `release` are the one place where a slot is taken and
    given back. With ``shared`` (the store counts slots for every app server: a
    ``claim_slot``), `claim` also takes one of the store's; the store frees it when the
    session ends or expires.
    """

    def __init__(
        self,
        limits: PoolLimits | None,
        monotonic: Callable[[], float],
        *,
        shared: bool = False,
    ) -> None:
        self.policy: PoolPolicy[None] | None = None if limits is None else PoolPolicy(limits)
        self.shared = shared
        self._mono = monotonic
        self._holders: dict[str, Expiring] = {}
        self._freed: dict[str, None] = {}  # ended here, end not yet confirmed (shared only)
        self._stored_as: dict[str, tuple[str, ...]] = {}  # rotated id -> ids it had, newest first

    def claim(
        self,
        sessions: Mapping[str, Expiring],
        now: float,
        session_id: str = "",
        expires_at: float = 0.0,
    ) -> Generator[AcquireSlot | ClaimSlot | Pause, Any, None]:
        """Take a slot for new session ``session_id`` (expiring at ``expires_at``), waiting
        (through the driver) when all are taken; `PoolExhaustedError` after ``max_wait``.

        A shared slot refused gives this server's slot back (a local waiter may use it),
        pauses, and tries again, both slots, until ``max_wait`` has passed.
        """
        policy = self.policy
        if policy is None:
            return
        limit, wait = policy.limits.max_total, policy.limits.max_wait
        deadline = self._mono() + wait
        pause, longest = SHARED_RETRY_SECONDS
        timeout = wait
        while True:
            if policy.full:
                self.sweep(sessions, now)
            try:
                yield from acquire(policy, self._mono, timeout)
            except PoolExhaustedError:  # a retry waited for what was left: report max_wait
                raise exhausted(limit, wait) from None
            if not self.shared:
                return
            try:
                granted = yield ClaimSlot(session_id, expires_at, limit, tuple(self._freed))
            except BaseException:
                policy.refund(self._mono())
                raise
            if granted:
                return
            policy.refund(self._mono())
            left = deadline - self._mono()
            if left <= 0:
                policy.timeouts += 1
                raise exhausted(limit, wait, shared=True)
            yield Pause(min(pause, left))
            pause = min(pause * 2, longest)
            timeout = max(0.0, deadline - self._mono())

    def hold(self, session: Expiring) -> None:
        """``session`` now holds the slot its `claim` took."""
        if self.policy is None:
            return
        self.policy.created += 1
        if self._holders.setdefault(session.session_id, session) is not session:
            self.policy.release(self._mono())  # the id already held a slot: do not count it twice
            self.policy.discarded += 1

    def move(self, old_id: str, session: Expiring) -> None:
        """A session changed its id (rotation): its slot goes with it.

        The store counts it under an earlier id until the rotation is written, and the
        write moves the slot over (`stored_as`): for a session of another server too.
        """
        if self.policy is None:
            return
        new_id = session.session_id
        if self.shared:
            self._stored_as[new_id] = (old_id, *self._stored_as.pop(old_id, ()))
        if self._holders.pop(old_id, None) is not None:
            self._holders[new_id] = session

    def stored_as(self, session_id: str) -> tuple[str, ...]:
        """The earlier ids of a rotated session whose rotation the store has not confirmed,
        newest first: the store's slot for it is held by one of them."""
        return self._stored_as.get(session_id, ())

    def release(self, session_id: str, *, evicted: bool = False) -> None:
        """The session ended (or, ``evicted``, expired or vanished): its slot comes back."""
        if self.policy is None:
            return
        stored = self._stored_as.pop(session_id, ())
        if self._holders.pop(session_id, None) is not None:
            if self.shared and not evicted:
                self._freed.update(dict.fromkeys((*stored, session_id)))
                while len(self._freed) > FREED_KEPT:
                    del self._freed[next(iter(self._freed))]
            self.policy.release(self._mono(), evicted=evicted)
            self.policy.discarded += 1  # session objects are never reused (see the benchmark)

    def end_stored(self, session_id: str) -> None:
        """The store holds the end of ``session_id`` (its shared slot is free there, or
        moved on to the id a written rotation gave the session)."""
        self._freed.pop(session_id, None)
        if self._stored_as:
            kept = {k: tuple(i for i in v if i != session_id) for k, v in self._stored_as.items()}
            self._stored_as = {k: ids for k, ids in kept.items() if ids}

    def sweep(self, sessions: Mapping[str, Expiring], now: float) -> int:
        """Give back the slots of expired sessions; ``sessions`` holds the freshest copies."""
        expired = []
        for sid, held in self._holders.items():
            current = sessions.get(sid)
            if current is not None and current is not held:
                self._holders[sid] = held = current
            if held.expired(now):
                expired.append(sid)
        for sid in expired:
            self.release(sid, evicted=True)
        return len(expired)

    def stats(self) -> dict[str, Any] | None:
        """The pool's counters, or None when live sessions are not pooled."""
        return None if self.policy is None else self.policy.stats().as_dict()
