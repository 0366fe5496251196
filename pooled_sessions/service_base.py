"""What both service drivers share: every step around the engine that is not waiting or I/O.

`SessionService` (a lock and a flusher thread) and `AsyncSessionService` (one event loop
and a flusher task) differ only in how they wait and how they reach the store. How an
engine request is routed, what a finished call asks for, how a failed flush is recorded,
which chores a background round does, and what shutdown reports are decided here, once.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar, cast

from pooled_sessions.adapters import check_kind, open_async_store, open_store
from pooled_sessions.codec import short_id
from pooled_sessions.config import Settings, resolve_settings
from pooled_sessions.engine.engine import (
    AcquireSlot,
    ClaimSlot,
    Ended,
    Engine,
    Flush,
    Load,
    LoadUser,
    Request,
    StoreOffers,
    WaitForRoom,
)
from pooled_sessions.errors import ServiceClosedError, StoreError, StoreUnavailableError
from pooled_sessions.model import ShutdownReport, ValidationResult

StoreT = TypeVar("StoreT")
logger = logging.getLogger("session_service")
FINAL_RETRY_SECONDS = 0.1


class ServiceBase(Generic[StoreT]):
    """What both services hold and build alike: settings, the store, the engine, the schedule.

    The first argument is a path or a store URL (the same as ``backend=``); ``settings``
    a `Settings`; ``store`` a ready store object of the service's kind (blocking or
    asyncio; the other kind is refused); any other keyword is a `Settings` field.
    """

    asynchronous: ClassVar[bool]

    def __init__(
        self,
        backend: str | os.PathLike[str] | None = None,
        /,
        *,
        settings: Settings | None = None,
        store: StoreT | None = None,
        **options: Any,
    ) -> None:
        self.settings = resolve_settings(backend, settings, options)
        opened = store
        if opened is None:
            opener = open_async_store if self.asynchronous else open_store
            opened = cast(StoreT, opener(self.settings.backend, self.settings))
        check_kind(opened, asynchronous=self.asynchronous)
        self._store: StoreT = opened
        self._engine = Engine(self.settings, offers=offers(opened))
        self._schedule = Schedule(self.settings, opened)
        self._closed = self._stopping = False
        self._prepare()

    def _prepare(self) -> None:
        """Build the driver's own parts (lock and thread, or events); the last step of init."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosedError("the session service was shut down")


def offers(store: object) -> StoreOffers:
    """The optional calls ``store`` offers the engine (see `StoreOffers`)."""
    return StoreOffers(
        ended=callable(getattr(store, "ended", None)),
        claim_slot=callable(getattr(store, "claim_slot", None)),
    )


def dispatch(
    request: Request,
    store: Any,
    *,
    acquire_slot: Callable[[AcquireSlot], Any],
    wait_for_room: Callable[[WaitForRoom], Any],
    pause: Callable[[float], Any],
) -> Any:
    """Route one engine request: store calls to the store, waits to the driver's own
    primitives (``pause`` is ``time.sleep`` or ``asyncio.sleep``).

    Returns what the route returns: the answer, or for an asyncio driver an awaitable.
    """
    if isinstance(request, Load):
        return store.load(request.session_id)
    if isinstance(request, LoadUser):
        return store.load_user(request.username)
    if isinstance(request, AcquireSlot):
        return acquire_slot(request)
    if isinstance(request, WaitForRoom):
        return wait_for_room(request)
    if isinstance(request, ClaimSlot):
        return store.claim_slot(*request)
    if isinstance(request, Ended):
        return store.ended(request.session_id)
    return pause(request.seconds)


class After(enum.Enum):
    """What a driver does once an engine operation returned."""

    NOTHING = enum.auto()
    WAKE = enum.auto()  # a flush is due: wake the flusher
    FLUSH = enum.auto()  # write-through: flush in the caller, a store error is left to retries
    FLUSH_OR_RAISE = enum.auto()  # write-through and the call changed a session: raise


def after_call(engine: Engine, *, writes: bool, changes_before: int) -> After:
    """Decide `After` from the engine's state; ``writes``: the call may change a session."""
    changed = writes and engine.pending.stats.changes != changes_before
    due = engine.flush_due()
    if not engine.settings.write_through:
        return After.WAKE if due else After.NOTHING
    if changed:
        return After.FLUSH_OR_RAISE
    return After.FLUSH if due else After.NOTHING


def validate_cached(
    engine: Engine, session_id: str, client_info: Any
) -> tuple[ValidationResult | None, After]:
    """The fast path of `validate_session`: a cached live session, no store request.

    Returns the result and what the driver does next; a None result sends the driver
    to the full operation (`Engine.validate`).
    """
    before = engine.pending.stats.changes
    result = engine.validate_cached(session_id, client_info)
    if result is None or engine.pending.stats.changes == before:
        return result, After.NOTHING
    return result, after_call(engine, writes=False, changes_before=before)


def flush_failed(engine: Engine, flush: Flush, error: BaseException, url: str) -> BaseException:
    """Keep a failed (or cancelled) batch pending; returns the exception the caller raises.

    A store's own errors pass as they are; anything else is reported as the store being
    unavailable (with the original as its cause), and cancellation stays cancellation.
    """
    delay = engine.flush_failed(flush, error)
    logger.warning(
        "flush of %d session(s) failed, retry in %.1f s: %s", len(flush.taken), delay, error
    )
    if isinstance(error, Exception) and not isinstance(error, StoreError):
        return StoreUnavailableError(f"store {url} failed: {error}")
    return error


class Chores(NamedTuple):
    """What one round of background work does."""

    flush: bool
    cleanup: bool
    poll: bool


class Schedule:
    """When the background flusher wakes, what it does then, and the store-side counters."""

    def __init__(self, settings: Settings, store: object = None) -> None:
        self._interval = settings.sync_interval_seconds
        self._next_sync = time.monotonic() + self._interval
        self._store = store
        self.purged = 0

    def wake_at(self, engine: Engine) -> float:
        """Monotonic time of the next round (a flush, a cleanup or a poll of the store)."""
        return min(engine.next_deadline(), self._next_sync)

    def chores(self, engine: Engine) -> Chores:
        """The chores due now; a poll is counted as done from here."""
        poll = time.monotonic() >= self._next_sync
        if poll:
            self._next_sync = time.monotonic() + self._interval
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

    def __init__(self, settings: Settings, timeout: float | None) -> None:
        limit = settings.shutdown_timeout_seconds if timeout is None else timeout
        self.deadline = time.monotonic() + limit
        self.written = 0
        self.error: str | None = None
        self.unsaved: tuple[str, ...] = ()

    def remaining(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def failed(self, error: BaseException) -> None:
        """Note a failed flush attempt."""
        self.error = f"{type(error).__name__}: {error}"

    def timed_out(self) -> None:
        """Note an attempt cut short by the deadline (after any earlier failure)."""
        note = "the write outlasted the shutdown time limit"
        self.error = note if self.error is None else f"{self.error}; then {note}"

    def pause(self, engine: Engine) -> float | None:
        """Seconds to wait before the next attempt, or None when shutdown should report now."""
        self.unsaved = tuple(short_id(sid) for sid in engine.pending.ids())
        if not self.unsaved or time.monotonic() >= self.deadline:
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
        return ShutdownReport(self.written, self.unsaved, self.error)
