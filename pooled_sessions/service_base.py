"""What both services share: every step around the engine that is not waiting or I/O.

`SessionService` (a lock and a flusher thread) and `AsyncSessionService` (one event loop
and a flusher task) differ only in how they run a flow (``_drive``: blocking, or
awaiting) and in their primitives for waiting and waking. The public operations are
written here once, as flows (the service's own flows, group commit and flush included,
are in service_flows.py); how each request is answered, what watching a shared store
means, what ``exclusive`` holds and how a service starts afresh after ``fork()`` are
decided here too.
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
    AcquireSlot,
    AwaitFlush,
    AwaitTurn,
    ClaimSlot,
    Commit,
    Ended,
    Flow,
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
from pooled_sessions.errors import ServiceClosedError
from pooled_sessions.model import ClientInfo, Session, ValidationResult
from pooled_sessions.redaction import redact
from pooled_sessions.service_api import Published, UserHold
from pooled_sessions.service_flows import ServiceFlows
from pooled_sessions.service_schedule import FinalFlush, Schedule

StoreT = TypeVar("StoreT")
logger = logging.getLogger("session_service")
ClientLike = ClientInfo | Mapping[str, Any] | None


class ServiceBase(ServiceFlows, Generic[StoreT]):
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
        self._owns_store = store is None
        opened = self._open_store() if store is None else store
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
        self._closed = self._stopping = self._shared_seen = False
        self._prepare()
        self._unwatch_clock = clock.watch(self._time_jumped)
        self._exit_hook = functools.partial(type(self)._at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)
        _live_services.add(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url!r})"

    # -- the public operations, as flows (each service presents them its way) ----------

    @Published
    def create_session(
        self,
        username: str | None,
        attributes: Mapping[str, Any] | None = None,
        client_info: ClientLike = None,
        *,
        session_id: str | None = None,
    ) -> Flow[str]:
        """Start a session for ``username`` (None: an anonymous one, for a visitor before
        login); returns its id (``session_id`` if given)."""
        sid = yield from self._engine.create(username, attributes, client_info, session_id)
        logger.debug("created session %s for %r", short_id(sid), username)
        return sid

    def _validate_cached(
        self, asked: bool, session_id: str, client_info: ClientLike = None
    ) -> ValidationResult | None:
        return self._engine.validate_cached(session_id, client_info, asked=asked)

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

    @Published.read
    def get_session(self, session_id: str) -> Flow[Session | None]:
        """A live session's snapshot, without touching it."""
        return self._engine.get(session_id)

    @Published
    def rotate_session(
        self,
        session_id: str,
        *,
        username: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        remove: Collection[str] = (),
    ) -> Flow[str | None]:
        """Give a live session a new id (after login or a privilege change); None if not live.

        ``username`` binds the new id to that user (the login of an anonymous session), and
        ``attributes``/``remove`` change it, all in one commit; the old id ends everywhere.
        """
        return self._engine.rotate(session_id, username, attributes, remove)

    @Published.read
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

    # -- answering a flow ----------------------------------------------------------------

    def _answer(self, request: Request) -> Any:
        """Answer one request with the store's call or the driver's own wait, wake or flush
        (`ANSWERS`, by the request's type). For an asyncio service the answer is an
        awaitable of it."""
        return ANSWERS[type(request)](self, request)

    # -- what each driver supplies -------------------------------------------------------

    _guard: contextlib.AbstractContextManager[Any]
    """Held while the engine is touched outside a flow (a lock, or nothing on one loop)."""

    def _prepare(self) -> None:
        """Build the driver's own parts (lock and thread, or events); a step of init, and
        again in a child process after ``fork()``."""
        raise NotImplementedError

    def _drive(self, flow: Flow[Any]) -> Any:
        """Run ``flow`` to its end (for an asyncio service, an awaitable of its result)."""
        raise NotImplementedError

    def _await_turn(self, seq: int) -> Any:
        """Wait until the caller of change ``seq`` need no longer wait (``commits.waits``);
        `_notify` wakes it then, and no other caller."""
        raise NotImplementedError

    def _await_flush(self, round_: int) -> Any:
        """Wait until the flush in flight or about to begin has ended (``engine.commits.rounds``
        is no longer ``round_``)."""
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
        cls, build: Callable[..., Flow[Any]], cached: Callable[..., Any] | None, reads: bool
    ) -> Callable[..., Any]:
        """The method of this service for a `Published` operation: runs ``build``'s flow
        (after ``cached``, the fast path, if given; ``reads``: a read of the cache)."""
        raise NotImplementedError

    @staticmethod
    def _at_exit(ref: weakref.ref[Any]) -> None:
        """Interpreter exit without shutdown: write what is pending."""
        raise NotImplementedError

    # -- wired once --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosedError("the session service was shut down")

    def _open_store(self) -> StoreT:
        opener = open_async_store if self.asynchronous else open_store
        return cast(StoreT, opener(self.settings.backend, self.settings))

    def _forked(self) -> None:
        """In a child process after ``fork()``: what the parent owes stays the parent's (its
        pending changes and cache are dropped here, so nothing is written twice); the
        child gets its own store connections, locks, flusher and listener."""
        if self._closed:
            return
        self._engine = self._engine.forked()
        self._schedule = Schedule(self.settings, self._clock)
        if self._owns_store:  # the parent's connections and locks stay the parent's
            self._store = self._open_store()
        self._prepare()

    def _watch_store(self) -> Any:
        """On a store shared with other servers (it has ``watch``): hear their ends and
        changes, and write ends at once so they hear ours. Returns what ``watch`` returns
        (an awaitable for an asyncio store), or None."""
        watch = getattr(self._store, "watch", None)
        if watch is None:
            return None
        self._engine.pending.prompt_ends = True
        if getattr(self, "_watched", None) is self._store:
            return None  # a store given to a service that forked: watched once, in the parent
        self._watched = self._store
        return watch(self._invalidated)

    def _invalidated(self, session_ids: Collection[str] | None, ended: bool) -> None:
        """Store callback: other servers ended or changed these sessions (None: any)."""
        with self._guard:
            if self._engine.invalidate(session_ids, ended=ended):
                self._notify()  # room was made
            if session_ids is not None:
                self._shared_store_seen()

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


ANSWERS: dict[type[Any], Callable[[Any, Any], Any]] = {
    Poll: lambda service, _: service._store.poll(),
    Load: lambda service, request: service._store.load(request.session_id),
    LoadUser: lambda service, request: service._store.load_user(request.username),
    Write: lambda service, request: service._store.write(request.operations, request.now),
    WakeFlusher: lambda service, _: service._wake_flusher(),
    Commit: lambda service, request: service._drive(service._committing(request.seq)),
    AwaitTurn: lambda service, request: service._await_turn(request.seq),
    AwaitFlush: lambda service, request: service._await_flush(request.round),
    FlushNow: lambda service, request: service._flush_now(request),
    WaitForRoom: lambda service, request: service._wait_for_room(request.session_id),
    AcquireSlot: lambda service, request: service._acquire_slot(request),
    ClaimSlot: lambda service, request: service._store.claim_slot(*request),
    Ended: lambda service, request: service._store.ended(request.session_id),
    Purge: lambda service, request: service._store.purge_expired(request.now),
    Pause: lambda service, request: service._pause(request.seconds),
}
"""How a service answers each request of a flow, by the request's type: a store call, or
the driver's own wait, wake or flush (one lookup: a commit makes three requests)."""


def offers(store: object) -> StoreOffers:
    """The optional calls ``store`` offers the engine (see `StoreOffers`)."""
    return StoreOffers(
        ended=callable(getattr(store, "ended", None)),
        claim_slot=callable(getattr(store, "claim_slot", None)),
        watch=callable(getattr(store, "watch", None)),
    )


_live_services: weakref.WeakSet[ServiceBase[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Give every service of this process a fresh start in a forked child (gunicorn
    ``--preload`` creates the service before forking its workers)."""
    for service in list(_live_services):
        try:
            service._forked()
        except Exception:  # a child must start even if one service cannot; it is logged
            logger.exception("a session service could not start afresh after fork()")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
