"""What both services share: every step around the engine that is not waiting or I/O.

`SessionService` (a lock and a flusher thread) and `AsyncSessionService` (one event loop
and a flusher task) differ only in how they run a flow (``_drive``: blocking, or
awaiting) and in their primitives for waiting and waking. The public operations, the
flush, the flusher's rounds and shutdown's last flushes are written here once, as flows;
how each request is answered, what watching a shared store means and what ``exclusive``
holds are decided here too.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, Generic, TypeVar, cast

from pooled_sessions.adapters import check_kind, check_ready, open_async_store, open_store
from pooled_sessions.clock import REAL_TIME, Clock
from pooled_sessions.codec import short_id
from pooled_sessions.config import Settings, resolve_settings
from pooled_sessions.engine.engine import Engine
from pooled_sessions.engine.requests import (
    POLL,
    AcquireSlot,
    ClaimSlot,
    Ended,
    Flow,
    Flush,
    FlushNow,
    Load,
    LoadUser,
    Pause,
    Poll,
    Purge,
    Request,
    StoreOffers,
    WaitForRoom,
    WakeFlusher,
    Write,
)
from pooled_sessions.errors import ServiceClosedError, StoreError, StoreUnavailableError
from pooled_sessions.model import ClientInfo, Session, ValidationResult
from pooled_sessions.redaction import redact
from pooled_sessions.service_api import Published, UserHold
from pooled_sessions.service_schedule import FinalFlush, Schedule

StoreT = TypeVar("StoreT")
logger = logging.getLogger("session_service")
ClientLike = ClientInfo | Mapping[str, Any] | None


class ServiceBase(Generic[StoreT]):
    """What both services hold and build alike: settings, the store, the engine, the schedule.

    The first argument is a path or a store URL (the same as ``backend=``); ``settings``
    a `Settings`; ``store`` a ready store object of the service's kind (blocking or
    asyncio; the other kind is refused); ``clock`` the time the service reads (a
    `pooled_sessions.clock.Clock`; real time by default); any other keyword is a
    `Settings` field.
    """

    asynchronous: ClassVar[bool]

    def __init__(
        self,
        backend: str | os.PathLike[str] | None = None,
        /,
        *,
        settings: Settings | None = None,
        store: StoreT | None = None,
        clock: Clock = REAL_TIME,
        **options: Any,
    ) -> None:
        self.settings = resolve_settings(backend, settings, options)
        opened = store
        if opened is None:
            opener = open_async_store if self.asynchronous else open_store
            opened = cast(StoreT, opener(self.settings.backend, self.settings))
        check_kind(opened, asynchronous=self.asynchronous)
        if self.settings.check_store and not self.asynchronous:  # asyncio: at first use
            check_ready(opened, close=store is None)
        self._store: StoreT = opened
        self._url = redact(str(cast(Any, opened).url))
        self._clock = clock
        self._engine = Engine(
            self.settings, clock=clock.time, monotonic=clock.monotonic, offers=offers(opened)
        )
        self._schedule = Schedule(self.settings, clock, opened)
        self._closed = self._stopping = False
        self._prepare()
        self._unwatch_clock = clock.watch(self._time_jumped)
        self._exit_hook = functools.partial(type(self)._at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url!r})"

    # -- the public operations, as flows (each service presents them its way) ----------

    @Published
    def create_session(
        self,
        username: str,
        attributes: Mapping[str, Any] | None = None,
        client_info: ClientLike = None,
        *,
        session_id: str | None = None,
    ) -> Flow[str]:
        """Start a session for ``username``; returns its id (``session_id`` if given)."""
        sid = yield from self._engine.create(username, attributes, client_info, session_id)
        logger.debug("created session %s for %r", short_id(sid), username)
        return sid

    def _validate_cached(
        self, session_id: str, client_info: ClientLike = None
    ) -> ValidationResult | None:
        return self._engine.validate_cached(session_id, client_info)

    @Published.with_fast_path(_validate_cached)
    def validate_session(
        self, session_id: str, client_info: ClientLike = None
    ) -> Flow[ValidationResult]:
        """Check a session for a request and touch it; the result says why if it is invalid."""
        return self._engine.validate(session_id, client_info)

    @Published
    def update_session(
        self, session_id: str, attributes: Mapping[str, Any], *, remove: Collection[str] = ()
    ) -> Flow[bool]:
        """Merge ``attributes`` into a live session, dropping ``remove``; False if not live."""
        return self._engine.update(session_id, attributes, remove)

    @Published
    def get_session(self, session_id: str) -> Flow[Session | None]:
        """A live session's snapshot, without touching it."""
        return self._engine.get(session_id)

    @Published
    def rotate_session(self, session_id: str) -> Flow[str | None]:
        """Give a live session a new id (after login or a privilege change); None if not live."""
        return self._engine.rotate(session_id)

    @Published
    def sessions_of(self, username: str) -> Flow[list[str]]:
        """Ids of ``username``'s live sessions, oldest first."""
        return self._engine.sessions_of(username)

    @Published
    def end_session(self, session_id: str) -> Flow[bool]:
        """End a session everywhere; True if a live session ended."""
        ended = yield from self._engine.end(session_id)
        if ended:
            logger.debug("ended session %s", short_id(session_id))
        return ended

    # -- the service's own flows -------------------------------------------------------

    def _flushing(self) -> Flow[int]:
        """One flush of everything pending; returns the sessions written.

        A failed (or cancelled) write keeps its batch pending and raises the store's own
        error, or `StoreUnavailableError` with the original as its cause.
        """
        engine, clock = self._engine, self._clock
        flush = engine.take_flush()
        if flush is None:
            return 0
        started = clock.monotonic()
        try:
            result = yield Write(flush.operations, clock.time())
        except BaseException as exc:
            error = flush_failed(engine, flush, exc, self._url)
            self._notify()
            if error is exc:
                raise
            raise error from exc
        engine.flush_succeeded(flush, result, clock.monotonic() - started)
        self._notify()
        return len(flush.operations)

    def _round(self) -> Flow[None]:
        """One round of the flusher: the flush, cleanup and poll of the store that are due."""
        engine = self._engine
        chores = self._schedule.chores(engine)
        if chores.flush:
            with contextlib.suppress(Exception):  # kept pending and logged; retried later
                yield FlushNow(background=True)
        if chores.cleanup:
            evicted = engine.cleanup()
            self._schedule.cleaned(evicted, (yield Purge(self._clock.time())))
        if chores.poll and (yield POLL):
            engine.invalidate(None)

    def _finishing(self, final: FinalFlush) -> Flow[None]:
        """Shutdown's last flushes: retried until nothing is pending or the time is up."""
        while True:
            try:
                final.written += yield FlushNow(background=True, limit=final.remaining())
            except TimeoutError:
                final.timed_out()
            except Exception as exc:
                final.failed(exc)
            pause = final.pause(self._engine)
            if pause is None:
                return
            yield Pause(pause)

    def _rest(self) -> float:
        """Seconds the flusher may sleep before its next round (0: a flush is due now)."""
        if self._engine.flush_due():
            return 0.0
        return max(0.0, self._schedule.wake_at(self._engine) - self._clock.monotonic())

    # -- answering a flow ----------------------------------------------------------------

    def _answer(self, request: Request) -> Any:
        """Answer one request with the store's call or the driver's own wait, wake or flush.

        For an asyncio service the answer is an awaitable of it.
        """
        store: Any = self._store
        if isinstance(request, Load):
            return store.load(request.session_id)
        if isinstance(request, LoadUser):
            return store.load_user(request.username)
        if isinstance(request, Write):
            return store.write(request.operations, request.now)
        if isinstance(request, WakeFlusher):
            return self._wake_flusher()
        if isinstance(request, FlushNow):
            return self._flush_now(request)
        if isinstance(request, WaitForRoom):
            return self._wait_for_room(request.session_id)
        if isinstance(request, AcquireSlot):
            return self._acquire_slot(request)
        if isinstance(request, ClaimSlot):
            return store.claim_slot(*request)
        if isinstance(request, Ended):
            return store.ended(request.session_id)
        if isinstance(request, Purge):
            return store.purge_expired(request.now)
        if isinstance(request, Poll):
            return store.poll()
        return self._pause(request.seconds)

    # -- what each driver supplies -------------------------------------------------------

    _guard: contextlib.AbstractContextManager[Any]
    """Held while the engine is touched outside a flow (a lock, or nothing on one loop)."""

    def _prepare(self) -> None:
        """Build the driver's own parts (lock and thread, or events); a step of init."""
        raise NotImplementedError

    def _notify(self) -> None:
        """Wake the flusher and every caller waiting for room (``_guard`` held)."""
        raise NotImplementedError

    def _time_jumped(self) -> None:
        """The clock jumped (any thread): the flusher re-reads it."""
        raise NotImplementedError

    def _wake_flusher(self) -> Any:
        raise NotImplementedError

    def _flush_now(self, request: FlushNow) -> Any:
        raise NotImplementedError

    def _wait_for_room(self, session_id: str) -> Any:
        raise NotImplementedError

    def _acquire_slot(self, request: AcquireSlot) -> Any:
        raise NotImplementedError

    def _pause(self, seconds: float) -> Any:
        raise NotImplementedError

    @classmethod
    def _publish(
        cls, build: Callable[..., Flow[Any]], cached: Callable[..., Any] | None
    ) -> Callable[..., Any]:
        """The method of this service for a `Published` operation: runs ``build``'s flow."""
        raise NotImplementedError

    @staticmethod
    def _at_exit(ref: weakref.ref[Any]) -> None:
        """Interpreter exit without shutdown: write what is pending."""
        raise NotImplementedError

    # -- wired once --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosedError("the session service was shut down")

    def _watch_store(self) -> Any:
        """On a store shared with other servers (it has ``watch``): hear their ends and
        changes, and write ends at once so they hear ours. Returns what ``watch`` returns
        (an awaitable for an asyncio store), or None."""
        watch = getattr(self._store, "watch", None)
        if watch is None:
            return None
        self._engine.pending.prompt_ends = True
        return watch(self._invalidated)

    def _invalidated(self, session_ids: Collection[str] | None, ended: bool) -> None:
        """Store callback: other servers ended or changed these sessions (None: any)."""
        with self._guard:
            self._engine.invalidate(session_ids, ended=ended)
            self._notify()

    def _user_hold(self, username: str, timeout: float, save: Callable[[], Any]) -> Any:
        """What `exclusive` holds (see `UserHold`); nothing on a store without ``user_lock``."""
        lock = getattr(self._store, "user_lock", None)
        if lock is None:
            return contextlib.nullcontext()
        return UserHold(lock(username, timeout), save)

    def _stats(self) -> dict[str, Any]:
        with self._guard:
            return self._schedule.stats(self._engine, self._url, closed=self._closed)

    def _begin_shutdown(self, timeout: float | None) -> FinalFlush | None:
        """Close the service and stop its flusher; None if it was already closed."""
        with self._guard:
            if self._closed:
                return None
            self._closed = self._stopping = True
            self._notify()
        atexit.unregister(self._exit_hook)
        self._unwatch_clock()
        return FinalFlush(self.settings, self._clock, timeout)


def offers(store: object) -> StoreOffers:
    """The optional calls ``store`` offers the engine (see `StoreOffers`)."""
    return StoreOffers(
        ended=callable(getattr(store, "ended", None)),
        claim_slot=callable(getattr(store, "claim_slot", None)),
    )


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
