"""SessionService: the engine driven with a lock, blocking store calls and one flusher thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from pooled_sessions.adapters import Store
from pooled_sessions.bounded import run_within
from pooled_sessions.engine.requests import AcquireSlot, Flow, FlushNow
from pooled_sessions.model import ShutdownReport
from pooled_sessions.pool import wait_for_grant
from pooled_sessions.service_base import ServiceBase
from pooled_sessions.service_schedule import FinalFlush

T = TypeVar("T")
logger = logging.getLogger("session_service")
SHUTDOWN_THREAD = "pooled-sessions-shutdown"


class SessionService(ServiceBase[Store]):
    """Sessions kept in memory, written behind in batches to the store a URL names.

    ``SessionService("sessions.json")`` or ``SessionService(backend="redis://...")``;
    every `Settings` field is accepted as a keyword (see `ServiceBase` for the
    arguments). Thread-safe.
    """

    asynchronous = False
    leads_in_flow = True

    def _prepare(self) -> None:
        self._lock = threading.Lock()
        self._wake = self._guard = threading.Condition(self._lock)
        self._flushed = threading.Condition(self._lock)  # a flush ended: room may be made
        self._turns: dict[int, threading.Lock] = {}  # callers waiting for a commit: their gates
        self._catch_up: Callable[[], None] | None = self._watch_store()
        self._thread = threading.Thread(
            target=self._background, name="pooled-sessions-flusher", daemon=True
        )
        self._thread.start()

    # -- the public API (create_session ... end_session: ServiceBase, `Published`) ------

    def force_save(self) -> int:
        """Write every pending change now; returns sessions written, raises if the store fails."""
        self._check_open()
        return self._flush()

    async def async_force_save(self) -> int:
        """`force_save` in a worker thread, so an event loop is not blocked."""
        return await asyncio.to_thread(self.force_save)

    def exclusive(
        self, username: str, timeout: float = 5.0
    ) -> contextlib.AbstractContextManager[None]:
        """Hold ``username`` alone among every app server sharing the store (a login).

        On a store with ``user_lock`` (Redis) the changes made inside are written before
        the lock goes, so the next holder sees them; elsewhere it does nothing.
        """
        hold: contextlib.AbstractContextManager[None] = self._user_hold(
            username, timeout, self.force_save
        )
        return hold

    def stats(self) -> dict[str, Any]:
        """Counters: pending changes, flushes and their durations, failures, live sessions."""
        return self._stats()

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Flush within ``timeout`` seconds, stop the flusher and close the store; idempotent.

        The limit is firm: a write still running at the deadline (a store that stopped
        answering) is left to finish on its own thread, and its sessions are reported
        unsaved; that thread closes the store when the write returns.
        """
        final = self._begin_shutdown(timeout)
        if final is None:
            return ShutdownReport(0)
        if run_within(lambda: self._finish(final), final.remaining(), SHUTDOWN_THREAD):
            return final.report()
        with self._lock:  # the write goes on alone (and closes the store when it returns)
            return final.abandoned(self._engine.pending.unconfirmed_ids())

    def _finish(self, final: FinalFlush) -> None:
        """Shutdown's work, on a thread of its own so that the time limit holds even when
        the store does not answer: the flusher's last round, the last flushes, the close."""
        self._thread.join(final.remaining())
        self._drive(self._finishing(final))
        self._store.close()

    def __enter__(self) -> SessionService:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    # -- driving a flow ----------------------------------------------------------------

    @classmethod
    def _publish(
        cls, build: Callable[..., Flow[Any]], cached: Callable[..., Any] | None, reads: bool
    ) -> Callable[..., Any]:
        def method(self: SessionService, /, *args: Any, **kwargs: Any) -> Any:
            if self._closed:
                self._check_open()
            if reads and self._catch_up is not None:  # events already received come first
                self._catch_up()
            if cached is not None:
                asked = self._news()
                with self._lock:
                    done = cached(self, asked, *args, **kwargs)
                if done is not None:
                    return done
            return self._drive(build(self, *args, **kwargs))

        return method

    def _news(self) -> bool:
        """For a read's fast path: ask a store that must be asked (`Engine.polls_first`)
        whether other processes wrote it, in this thread; True once the cache is current
        (`Engine.polled`), False to leave the asking to the read's flow."""
        if not self._engine.polls_first:
            return False
        try:
            changed = self._store.poll()
        except Exception:  # the flow asks again, and serves the cache if it still cannot
            return False
        with self._lock:
            return self._engine.polled(changed)

    def _drive(self, flow: Flow[T]) -> T:
        """Run ``flow`` to its end: each step under the lock, each request answered outside
        it, in this thread; a failed answer is thrown into the flow."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            with self._lock:
                try:
                    request = flow.send(reply) if error is None else flow.throw(error)
                except StopIteration as stop:
                    return cast(T, stop.value)
            try:
                reply, error = self._answer(request), None
            except BaseException as exc:  # the flow cleans up (a pool wait is withdrawn)
                reply, error = None, exc

    def _flush(self) -> int:
        """Write one batch of everything pending; one flush at a time."""
        return self._drive(self._flushing())

    def _flush_now(self, request: FlushNow) -> int:
        return self._flush()  # a thread cannot be stopped: no limit, caller or not

    def _await_flush(self, round_: int) -> None:
        commits = self._engine.commits
        with self._flushed:
            self._flushed.wait_for(lambda: commits.rounds != round_)

    def _wake_flusher(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _await_turn(self, seq: int) -> None:
        with self._lock:
            if not self._engine.commits.waits(seq):
                return
            gate = self._turns[seq] = threading.Lock()
            gate.acquire()
        try:  # a gate of its own: woken, it need not contend for the lock its waker holds
            gate.acquire()
        except BaseException:
            with self._lock:
                self._turns.pop(seq, None)
            raise

    def _notify(self, flusher: bool = True) -> None:
        if flusher:
            self._wake.notify_all()
        self._flushed.notify_all()
        waits = self._engine.commits.waits
        for seq in [seq for seq in self._turns if not waits(seq)]:
            self._turns.pop(seq).release()

    def _time_jumped(self) -> None:
        self._wake_flusher()

    def _wait_for_room(self, session_id: str) -> bool:
        self._wake_flusher()
        has_room = self._engine.pending.has_room
        with self._flushed:
            return self._flushed.wait_for(
                lambda: has_room(session_id), self.settings.backpressure_timeout_seconds
            )

    def _acquire_slot(self, request: AcquireSlot) -> None:
        with self._lock:
            wait_for_grant(self._lock, request)

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- background work ---------------------------------------------------------------

    def _background(self) -> None:
        while True:
            with self._wake:
                rest = 0.0 if self._stopping else self._rest()
                if rest > 0:
                    self._wake.wait(rest)
                if self._stopping:
                    return
            try:
                self._drive(self._round())
            except Exception:  # the flusher must survive anything; the error is in stats
                logger.exception("background session work failed")

    @staticmethod
    def _at_exit(ref: weakref.ref[Any]) -> None:
        service = ref()
        if service is not None:
            service.shutdown()
