"""What an engine operation may ask of its driver, and what a flush hands to a store.

Every engine operation (core.py) is a generator that yields one of these requests and is
sent the answer; the drivers route them (driver.py) and do the waiting or the I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from pooled_sessions.codec import Operation
from pooled_sessions.engine.pending import Dirty
from pooled_sessions.engine.pool_policy import AcquireSlot as AcquireSlot
from pooled_sessions.engine.pool_policy import ClaimSlot as ClaimSlot
from pooled_sessions.engine.pool_policy import Pause as Pause

T = TypeVar("T")


class Load(NamedTuple):
    """Ask the store for one session's record (or None)."""

    session_id: str


class LoadUser(NamedTuple):
    """Ask the store for every record of one user, as ``{session_id: record}``."""

    username: str


class Ended(NamedTuple):
    """Ask the store whether ``session_id`` was ended (it keeps a tombstone); True or False."""

    session_id: str


class StoreOffers(NamedTuple):
    """Optional store calls the engine may ask for; the driver looks at its store once."""

    ended: bool = False  # store.ended(id): ids ended by any process are never reused
    claim_slot: bool = False  # store.claim_slot(...): max_total counted across servers


NO_OFFERS = StoreOffers()


class WaitForRoom(NamedTuple):
    """Ask the driver to wait until the pending buffer has room; answer True if it has."""

    session_id: str


# AcquireSlot, ClaimSlot and Pause (poolpolicy.py; their docstrings are the driver's
# contract): with a pool configured and every live-session slot taken, `create` waits for
# one, up to max_wait; on a store shared by several servers it also claims the store's.
Request = Load | LoadUser | Ended | WaitForRoom | AcquireSlot | ClaimSlot | Pause
Op = Generator[Request, Any, T]


@dataclass(slots=True)
class Flush:
    """One batch handed to a store, and the changes it settles."""

    operations: list[Operation]
    taken: dict[str, Dirty]


def new_session_id() -> str:
    """A fresh session id: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)
