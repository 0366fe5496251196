"""The engine's live-session slots: which sessions hold one, claims on a store shared by
several app servers, and the slots of rotated ids, over one `PoolPolicy`.

Pure: no threads, no I/O, no asyncio; `SlotLedger` yields requests (`AcquireSlot`,
`ClaimSlot`, `Pause`) when a driver must wait or ask the store.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, NamedTuple, Protocol

from pooled_sessions.config import PoolLimits
from pooled_sessions.engine.pool_policy import AcquireSlot, PoolPolicy, acquire, exhausted
from pooled_sessions.errors import PoolExhaustedError


class Expiring(Protocol):
    """What the ledger needs of a live session."""

    @property
    def session_id(self) -> str: ...

    def expired(self, now: float) -> bool: ...


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
