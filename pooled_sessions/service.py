"""SessionService: the engine driven with a lock, blocking store calls and one flusher thread."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from pooled_sessions.adapters import Store
from pooled_sessions.codec import short_id
from pooled_sessions.engine.engine import AcquireSlot, Flush, Op, WaitForRoom
from pooled_sessions.errors import StoreError
from pooled_sessions.model import ClientInfo, Session, ShutdownReport, ValidationResult
from pooled_sessions.pool import wait_for_grant
from pooled_sessions.service_base import (
    After,
    FinalFlush,
    ServiceBase,
    after_call,
    dispatch,
    flush_failed,
    validate_cached,
)

T = TypeVar("T")
logger = logging.getLogger("session_service")
ClientLike = ClientInfo | Mapping[str, Any] | None


class SessionService(ServiceBase[Store]):
    """Sessions kept in memory, written behind in batches to the store a URL names.

    ``SessionService("sessions.json")`` or ``SessionService(backend="redis://...")``;
    every `Settings` field is accepted as a keyword (see `ServiceBase` for the
    arguments). Thread-safe.
    """

    asynchronous = False

    def _prepare(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        watch = getattr(self._store, "watch", None)
        if watch is not None:  # shared with other servers: end at once, hear their ends
            self._engine.pending.prompt_ends = True
            watch(self._invalidated)
        self._thread = threading.Thread(
            target=self._background, name="pooled-sessions-flusher", daemon=True
        )
        self._thread.start()
        self._exit_hook = functools.partial(_shutdown_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    # -- the public API ----------------------------------------------------------------

    def create_session(
        self,
        username: str,
        attributes: Mapping[str, Any] | None = None,
        client_info: ClientLike = None,
        *,
        session_id: str | None = None,
    ) -> str:
        """Start a session for ``username``; returns its id (``session_id`` if given)."""
        sid = self._call(
            self._engine.create(username, attributes, client_info, session_id), writes=True
        )
        logger.debug("created session %s for %r", short_id(sid), username)
        return sid

    def validate_session(self, session_id: str, client_info: ClientLike = None) -> ValidationResult:
        """Check a session for a request and touch it; the result says why if it is invalid."""
        if self._closed:
            self._check_open()
        engine = self._engine
        with self._lock:  # the common case first: a cached live session, no store request
            result, after = validate_cached(engine, session_id, client_info)
        if result is None:
            return self._call(engine.validate(session_id, client_info))
        if after is not After.NOTHING:
            self._after(after)
        return result

    def update_session(
        self, session_id: str, attributes: Mapping[str, Any], *, remove: Collection[str] = ()
    ) -> bool:
        """Merge ``attributes`` into a live session, dropping ``remove``; False if not live."""
        return self._call(self._engine.update(session_id, attributes, remove), writes=True)

    def get_session(self, session_id: str) -> Session | None:
        """A live session's snapshot, without touching it."""
        return self._call(self._engine.get(session_id))

    def rotate_session(self, session_id: str) -> str | None:
        """Give a live session a new id (after login or a privilege change); None if not live."""
        return self._call(self._engine.rotate(session_id), writes=True)

    def sessions_of(self, username: str) -> list[str]:
        """Ids of ``username``'s live sessions, oldest first."""
        return self._call(self._engine.sessions_of(username))

    def end_session(self, session_id: str) -> bool:
        """End a session everywhere; True if a live session ended."""
        ended = self._call(self._engine.end(session_id), writes=True)
        if ended:
            logger.debug("ended session %s", short_id(session_id))
        return ended

    def force_save(self) -> int:
        """Write every pending change now; returns sessions written, raises if the store fails."""
        self._check_open()
        return self._flush()

    async def async_force_save(self) -> int:
        """`force_save` in a worker thread, so an event loop is not blocked."""
        return await asyncio.to_thread(self.force_save)

    @contextlib.contextmanager
    def exclusive(self, username: str, timeout: float = 5.0) -> Iterator[None]:
        """Hold ``username`` alone among every app server sharing the store (a login).

        On a store with ``user_lock`` (Redis) the changes made inside are written before
        the lock goes, so the next holder sees them; elsewhere it does nothing.
        """
        lock = getattr(self._store, "user_lock", None)
        if lock is None:
            yield
            return
        with lock(username, timeout):
            yield
            self.force_save()

    def stats(self) -> dict[str, Any]:
        """Counters: pending changes, flushes and their durations, failures, live sessions."""
        with self._lock:
            return self._schedule.stats(self._engine, str(self._store.url), closed=self._closed)

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Flush within ``timeout`` seconds, stop the flusher and close the store; idempotent."""
        with self._wake:
            if self._closed:
                return ShutdownReport(0)
            self._closed = self._stopping = True
            self._wake.notify_all()
        atexit.unregister(self._exit_hook)
        final = FinalFlush(self.settings, timeout)
        self._thread.join(final.remaining())
        self._final_flush(final)
        self._store.close()
        return final.report()

    def __enter__(self) -> SessionService:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    # -- driving the engine ------------------------------------------------------------

    def _call(self, op: Op[T], *, writes: bool = False) -> T:
        """Run one engine operation; ``writes``: its change must reach a write-through store."""
        self._check_open()
        reply: Any = None
        before = -1
        try:
            while True:
                with self._lock:
                    if before < 0:
                        before = self._engine.pending.stats.changes
                    try:
                        request = op.send(reply)
                    except StopIteration as stop:
                        after = after_call(self._engine, writes=writes, changes_before=before)
                        result: T = stop.value
                        break
                reply = dispatch(
                    request,
                    self._store,
                    acquire_slot=self._acquire_slot,
                    wait_for_room=self._wait_for_room,
                    pause=time.sleep,
                )
        except BaseException:
            with self._lock:  # abandoned mid-way: a wait for a pool slot withdraws under the lock
                op.close()
            raise
        self._after(after)
        return result

    def _acquire_slot(self, request: AcquireSlot) -> None:
        with self._lock:
            wait_for_grant(self._lock, request)

    def _wait_for_room(self, request: WaitForRoom) -> bool:
        self._wake_flusher()
        has_room = self._engine.pending.has_room
        with self._wake:
            return self._wake.wait_for(
                lambda: has_room(request.session_id), self.settings.backpressure_timeout_seconds
            )

    def _invalidated(self, session_ids: Collection[str] | None, ended: bool) -> None:
        """Store callback, from any thread: other servers ended or changed these sessions."""
        with self._wake:
            self._engine.invalidate(session_ids, ended=ended)
            self._wake.notify_all()

    def _after(self, after: After) -> None:
        """Wake the flusher, or in write-through mode flush here, backoff or not.

        A write-through call that changed a session raises if the store refused it (the
        change stays pending and is retried); a read's touch is left to the retries.
        """
        if after is After.WAKE:
            self._wake_flusher()
        elif after is not After.NOTHING:
            try:
                self._flush()
            except StoreError:
                if after is After.FLUSH_OR_RAISE:
                    raise

    def _wake_flusher(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _flush(self) -> int:
        """Write one batch of everything pending; one flush at a time."""
        with self._flush_lock:
            with self._lock:
                flush = self._engine.take_flush()
            if flush is None:
                return 0
            self._write(flush)
            return len(flush.operations)

    def _write(self, flush: Flush) -> None:
        started = time.monotonic()
        try:
            result = self._store.write(flush.operations, time.time())
        except BaseException as exc:
            with self._wake:
                error = flush_failed(self._engine, flush, exc, str(self._store.url))
                self._wake.notify_all()
            if error is exc:
                raise
            raise error from exc
        with self._wake:
            self._engine.flush_succeeded(flush, result, time.monotonic() - started)
            self._wake.notify_all()

    # -- background work ---------------------------------------------------------------

    def _background(self) -> None:
        engine = self._engine
        while True:
            with self._wake:
                if self._stopping:
                    return
                if not engine.flush_due():
                    wake_at = self._schedule.wake_at(engine)
                    self._wake.wait(max(0.0, wake_at - time.monotonic()))
                if self._stopping:
                    return
            try:
                self._background_step()
            except Exception:  # the flusher must survive anything; the error is in stats
                logger.exception("background session work failed")

    def _background_step(self) -> None:
        engine = self._engine
        with self._lock:
            chores = self._schedule.chores(engine)
        if chores.flush:
            try:
                self._flush()
            except Exception:
                pass  # logged and kept pending by _write; retried after the backoff
        if chores.cleanup:
            with self._lock:
                evicted = engine.cleanup()
            self._schedule.cleaned(evicted, self._store.purge_expired(time.time()))
        if chores.poll and self._store.poll():
            with self._lock:
                engine.invalidate(None)

    def _final_flush(self, final: FinalFlush) -> None:
        while True:
            try:
                final.written += self._flush()
            except Exception as exc:
                final.failed(exc)
            with self._lock:
                pause = final.pause(self._engine)
            if pause is None:
                return
            time.sleep(pause)


def _shutdown_at_exit(ref: weakref.ref[SessionService]) -> None:
    service = ref()
    if service is not None:
        service.shutdown()
