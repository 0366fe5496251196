"""SessionService: the engine driven with a lock, blocking store calls and one flusher thread."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any, TypeVar

from .adapters import Store, open_store
from .config import Settings, resolve_settings
from .core import AcquireSlot, Engine, Flush, Load, LoadUser, Op, Request
from .errors import ServiceClosedError, StoreError, StoreUnavailableError
from .model import ClientInfo, Session, ShutdownReport, ValidationResult
from .pool import wait_for_grant

T = TypeVar("T")
logger = logging.getLogger("session_service")
ClientLike = ClientInfo | Mapping[str, Any] | None


def short(session_id: str) -> str:
    """A session id cut short for logs: enough to correlate, useless to an attacker."""
    return session_id[:6] + "…"


class SessionService:
    """Sessions kept in memory, written behind in batches to the store a URL names.

    ``SessionService("sessions.json")`` or ``SessionService(backend="redis://...")``;
    every `Settings` field is accepted as a keyword. Thread-safe.
    """

    def __init__(
        self,
        backend: str | os.PathLike[str] | None = None,
        /,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        **options: Any,
    ) -> None:
        self.settings = resolve_settings(backend, settings, options)
        if store is None:
            store = open_store(self.settings.backend, self.settings)
        self._store = store
        self._engine = Engine(self.settings)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._purged = 0
        self._next_sync = time.monotonic() + self.settings.sync_interval_seconds
        watch = getattr(store, "watch", None)
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
        logger.debug("created session %s for %r", short(sid), username)
        return sid

    def validate_session(self, session_id: str, client_info: ClientLike = None) -> ValidationResult:
        """Check a session for a request and touch it; the result says why if it is invalid."""
        return self._call(self._engine.validate(session_id, client_info))

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
            logger.debug("ended session %s", short(session_id))
        return ended

    def force_save(self) -> int:
        """Write every pending change now; returns sessions written, raises if the store fails."""
        self._check_open()
        return self._flush()

    async def async_force_save(self) -> int:
        """`force_save` in a worker thread, so an event loop is not blocked."""
        return await asyncio.to_thread(self.force_save)

    def stats(self) -> dict[str, Any]:
        """Counters: pending changes, flushes and their durations, failures, live sessions."""
        with self._lock:
            stats = self._engine.stats()
        stats.update(store=str(self._store.url), store_purged=self._purged, closed=self._closed)
        return stats

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Flush within ``timeout`` seconds, stop the flusher and close the store; idempotent."""
        with self._wake:
            if self._closed:
                return ShutdownReport(0)
            self._closed = self._stopping = True
            self._wake.notify_all()
        atexit.unregister(self._exit_hook)
        limit = self.settings.shutdown_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + limit
        self._thread.join(max(0.0, deadline - time.monotonic()))
        report = self._final_flush(deadline)
        self._store.close()
        return report

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
                        due = self._engine.flush_due()
                        changed = writes and self._engine.pending.stats.changes != before
                        result: T = stop.value
                        break
                reply = self._perform(request)
        except BaseException:
            with self._lock:  # abandoned mid-way: a wait for a pool slot withdraws under the lock
                op.close()
            raise
        if due or (changed and self.settings.write_through):
            self._flush_is_due(changed)
        return result

    def _perform(self, request: Request) -> Any:
        if isinstance(request, Load):
            return self._store.load(request.session_id)
        if isinstance(request, LoadUser):
            return self._store.load_user(request.username)
        if isinstance(request, AcquireSlot):
            with self._lock:
                return wait_for_grant(self._lock, request)
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

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosedError("the session service was shut down")

    def _flush_is_due(self, changed: bool) -> None:
        """Wake the flusher, or in write-through mode flush here, backoff or not.

        A write-through call that changed a session raises if the store refused it (the
        change stays pending and is retried); a read's touch is left to the retries.
        """
        if not self.settings.write_through:
            self._wake_flusher()
            return
        try:
            self._flush()
        except StoreError:
            if changed:
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
                delay = self._engine.flush_failed(flush, exc)
                self._wake.notify_all()
            logger.warning(
                "flush of %d session(s) failed, retry in %.1f s: %s", len(flush.taken), delay, exc
            )
            if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                raise StoreUnavailableError(f"store {self._store.url} failed: {exc}") from exc
            raise
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
                    wake_at = min(engine.next_deadline(), self._next_sync)
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
            flush_due, cleanup_due = engine.flush_due(), engine.cleanup_due()
        if flush_due:
            try:
                self._flush()
            except Exception:
                pass  # logged and kept pending by _write; retried after the backoff
        if cleanup_due:
            with self._lock:
                evicted = engine.cleanup()
            purged = self._store.purge_expired(time.time())
            self._purged += purged
            logger.info("cleanup: %d expired session(s) evicted, %d purged", evicted, purged)
        if time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + self.settings.sync_interval_seconds
            if self._store.poll():
                with self._lock:
                    engine.invalidate(None)

    def _final_flush(self, deadline: float) -> ShutdownReport:
        written, error = 0, None
        while True:
            try:
                written += self._flush()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                unsaved = tuple(short(sid) for sid in self._engine.pending.ids())
            if not unsaved or time.monotonic() >= deadline:
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        if unsaved:
            logger.error(
                "shutdown could not write %d session(s) (%s): %s",
                len(unsaved), error, ", ".join(unsaved[:20]),
            )
        return ShutdownReport(written, unsaved, error)


def _shutdown_at_exit(ref: weakref.ref[SessionService]) -> None:
    service = ref()
    if service is not None:
        service.shutdown()
