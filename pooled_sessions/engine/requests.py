"""Every request a flow can make of its driver, and what a flush hands to a store.

A flow is a generator: the engine's operations (`Engine.create`, ...) and the services'
own flushes and chores (service_base.py) are flows. Each yields one of these requests and
is sent the answer; a failed answer is thrown into it. `SessionService` and
`AsyncSessionService` answer them, blocking or awaiting (`ServiceBase._answer`).
"""

from __future__ import annotations

import secrets
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from pooled_sessions.codec import Operation
from pooled_sessions.engine.pending import Dirty
from pooled_sessions.engine.pool_policy import AcquireSlot as AcquireSlot
from pooled_sessions.engine.slot_ledger import ClaimSlot as ClaimSlot
from pooled_sessions.engine.slot_ledger import Pause as Pause

T = TypeVar("T")

# -- of the store ------------------------------------------------------------------------


class Load(NamedTuple):
    """Ask the store for one session's record (or None)."""

    session_id: str


class LoadUser(NamedTuple):
    """Ask the store for every record of one user, as ``{session_id: record}``."""

    username: str


class Ended(NamedTuple):
    """Ask the store whether ``session_id`` was ended (it keeps a tombstone); True or False."""

    session_id: str


class Write(NamedTuple):
    """Hand one batch to the store (``store.write``); answered with its `WriteResult`."""

    operations: list[Operation]
    now: float


class Purge(NamedTuple):
    """Drop expired records from the store (``store.purge_expired``); answered with how many."""

    now: float


class Poll(NamedTuple):
    """Ask the store what other processes changed (``store.poll``): a `codec.Changes`."""


POLL = Poll()


class StoreOffers(NamedTuple):
    """Optional store calls the engine may ask for; the driver looks at its store once."""

    ended: bool = False  # store.ended(id): ids ended by any process are never reused
    claim_slot: bool = False  # store.claim_slot(...): max_total counted across servers
    watch: bool = False  # store.watch(...): other processes' changes are pushed, not polled


NO_OFFERS = StoreOffers()

# -- of the driver -----------------------------------------------------------------------


class WaitForRoom(NamedTuple):
    """Ask the driver to wait until the pending buffer has room; answer True if it has."""

    session_id: str


class WakeFlusher(NamedTuple):
    """A change made a flush due: wake the background flusher (the answer is ignored)."""


WAKE_FLUSHER = WakeFlusher()


class FlushNow(NamedTuple):
    """Write every pending change now, one flush at a time; answered with the sessions written.

    A failed write is thrown into the flow, its batch kept pending. ``background``: the
    flush of the flusher or of shutdown, which stops with its task; a caller's flush goes
    on even if the caller stops waiting. ``limit``: seconds the write may take (the asyncio
    driver cancels it past them and throws `TimeoutError`, and starts none with no time
    left); a thread cannot be stopped, so the blocking driver lets its write finish.
    """

    background: bool = False
    limit: float | None = None


FLUSH_NOW = FlushNow()


class Commit(NamedTuple):
    """Return only once change ``seq`` is committed to the store; answered by the group
    commit (``ServiceBase._committing``): wait for the flush in flight, or lead the next.

    A failed write is thrown into the flow; the engine has undone the change by then.
    """

    seq: int


class AwaitTurn(NamedTuple):
    """Wait until the caller of change ``seq`` need no longer wait (``engine.commits.waits``
    is False): its change was settled, or it leads the next flush. The answer is ignored."""

    seq: int


class AwaitFlush(NamedTuple):
    """Wait until the flush in flight (or about to begin) has ended: until
    ``engine.commits.rounds`` is no longer ``round``. The answer is ignored."""

    round: int


# AcquireSlot, ClaimSlot and Pause (pool_policy.py; their docstrings are the driver's
# contract): with a pool configured and every live-session slot taken, `create` waits for
# one, up to max_wait; on a store shared by several servers it also claims the store's.
Request = (
    Load
    | LoadUser
    | Ended
    | Write
    | Purge
    | Poll
    | WaitForRoom
    | AcquireSlot
    | ClaimSlot
    | Pause
    | WakeFlusher
    | FlushNow
    | Commit
    | AwaitTurn
    | AwaitFlush
)
Flow = Generator[Request, Any, T]
"""A generator that yields requests, is sent their answers, and returns a ``T``."""


@dataclass(slots=True)
class Flush:
    """One batch handed to a store, the changes it settles, and the number of the latest
    change it covers (see `CommitLog`)."""

    operations: list[Operation]
    taken: dict[str, Dirty]
    upto: int = 0


def new_session_id() -> str:
    """A fresh session id: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)
