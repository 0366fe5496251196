"""AsyncSessionService: the engine driven on one event loop, with one flusher task.

The same engine generators as `SessionService` (core.py) and the same driver steps
(driver.py); this module only answers the engine's requests with asyncio: awaiting an
asyncio store, and waiting for a pool slot or for room in the pending buffer with
events. Everything runs on the loop that first used the service, so no lock guards the
engine: it is only touched between awaits.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from pooled_sessions import service_base as driver
from pooled_sessions.adapters import AsyncStore
from pooled_sessions.codec import short_id
from pooled_sessions.engine.engine import AcquireSlot, Op, WaitForRoom
from pooled_sessions.errors import SessionError, StoreError
from pooled_sessions.model import ClientInfo, Session, ShutdownReport, ValidationResult
from pooled_sessions.service_base import After, FinalFlush, ServiceBase

T = TypeVar("T")
logger = logging.getLogger("session_service")
ClientLike = ClientInfo | Mapping[str, Any] | None
FLUSHER_NAME = "pooled-sessions-flusher"


class AsyncSessionService(ServiceBase[AsyncStore]):
    """`SessionService` for asyncio: the same methods, as coroutines, and the same semantics.

    ``AsyncSessionService("aiofile:///var/lib/app/sessions.json")`` (a path or ``file://``
    also means the aiofiles store here), ``memory://`` or a Redis URL; every `Settings`
    field is accepted as a keyword (see `ServiceBase` for the arguments). Safe for any
    number of tasks of one event loop; use one service per loop. ``async with`` shuts it
    down.
    """

    asynchronous = True

    def _prepare(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the flusher: a flush may be due
        self._settled = asyncio.Event()  # replaced each time room may have come free
        self._flush_lock = asyncio.Lock()  # one flush at a time, never two
        self._tasks: set[asyncio.Task[int]] = set()  # flushes callers await (shielded)
        self._done = asyncio.Event()
        self._exit_hook = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    # -- the public API ----------------------------------------------------------------

    async def create_session(
        self,
        username: str,
        attributes: Mapping[str, Any] | None = None,
        client_info: ClientLike = None,
        *,
        session_id: str | None = None,
    ) -> str:
        """Start a session for ``username``; returns its id (``session_id`` if given)."""
        op = self._engine.create(username, attributes, client_info, session_id)
        sid = await self._call(op, writes=True)
        logger.debug("created session %s for %r", short_id(sid), username)
        return sid

    async def validate_session(
        self, session_id: str, client_info: ClientLike = None
    ) -> ValidationResult:
        """Check a session for a request and touch it; the result says why if it is invalid."""
        flusher = self._flusher
        if (
            flusher is not None
            and not flusher.done()
            and not self._closed
            and self._loop is asyncio.get_running_loop()
        ):  # a cached live session
            result, after = driver.validate_cached(self._engine, session_id, client_info)
            if result is not None:
                if after is not After.NOTHING:
                    await self._after(after)
                return result
        return await self._call(self._engine.validate(session_id, client_info))

    async def update_session(
        self, session_id: str, attributes: Mapping[str, Any], *, remove: Collection[str] = ()
    ) -> bool:
        """Merge ``attributes`` into a live session, dropping ``remove``; False if not live."""
        return await self._call(self._engine.update(session_id, attributes, remove), writes=True)

    async def get_session(self, session_id: str) -> Session | None:
        """A live session's snapshot, without touching it."""
        return await self._call(self._engine.get(session_id))

    async def rotate_session(self, session_id: str) -> str | None:
        """Give a live session a new id (after login or a privilege change); None if not live."""
        return await self._call(self._engine.rotate(session_id), writes=True)

    async def sessions_of(self, username: str) -> list[str]:
        """Ids of ``username``'s live sessions, oldest first."""
        return await self._call(self._engine.sessions_of(username))

    async def end_session(self, session_id: str) -> bool:
        """End a session everywhere; True if a live session ended."""
        if ended := await self._call(self._engine.end(session_id), writes=True):
            logger.debug("ended session %s", short_id(session_id))
        return ended

    async def force_save(self) -> int:
        """Write every pending change now; returns sessions written, raises if the store fails.

        A caller cancelled while it waits stops waiting; the flush itself goes on.
        """
        self._check_open()
        await self._start()
        return await self._caller_flush()

    async def async_force_save(self) -> int:
        """The same as `force_save` (the name `SessionService` uses for its awaitable one)."""
        return await self.force_save()

    @contextlib.asynccontextmanager
    async def exclusive(self, username: str, timeout: float = 5.0) -> AsyncIterator[None]:
        """Hold ``username`` alone among every app server sharing the store (a login).

        ``async with svc.exclusive(user):`` on a store with ``user_lock`` (Redis) writes the
        changes made inside before the lock goes, so the next holder sees them; elsewhere
        it does nothing.
        """
        hold = getattr(self._store, "user_lock", None)
        if hold is None:
            yield
            return
        async with hold(username, timeout):
            yield
            await self.force_save()

    async def stats(self) -> dict[str, Any]:
        """Counters: pending changes, flushes and their durations, failures, live sessions."""
        return self._schedule.stats(self._engine, str(self._store.url), closed=self._closed)

    async def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Flush within ``timeout`` seconds, stop the flusher and close the store; idempotent.

        The limit is firm: a write still running at the deadline is cancelled (its batch
        stays pending) and reported unsaved. Later calls wait for the first to finish.
        """
        if self._closed:
            await self._done.wait()
            return ShutdownReport(0)
        self._closed = self._stopping = True
        atexit.unregister(self._exit_hook)
        final = FinalFlush(self.settings, timeout)
        try:
            await self._stop_flusher(final.remaining())
            await self._final_flush(final)
        finally:
            try:
                await self._store.close()
            finally:
                self._done.set()
        return final.report()

    async def __aenter__(self) -> AsyncSessionService:
        self._check_open()
        await self._start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # -- driving the engine ------------------------------------------------------------

    async def _call(self, op: Op[T], *, writes: bool = False) -> T:
        """Run one engine operation; ``writes``: its change must reach a write-through store."""
        try:
            self._check_open()
            flusher = self._flusher
            if flusher is None or flusher.done() or self._loop is not asyncio.get_running_loop():
                await self._start()
            before = self._engine.pending.stats.changes
            reply: Any = None
            while True:
                request = op.send(reply)
                reply = await driver.dispatch(
                    request,
                    self._store,
                    acquire_slot=self._acquire_slot,
                    wait_for_room=self._wait_for_room,
                    pause=asyncio.sleep,
                )
        except StopIteration as stop:
            result: T = stop.value
        finally:
            op.close()  # abandoned mid-way: a wait for a pool slot is withdrawn
        after = driver.after_call(self._engine, writes=writes, changes_before=before)
        if after is not After.NOTHING:
            await self._after(after)
        return result

    async def _after(self, after: After) -> None:
        if after is After.WAKE:
            self._wake.set()
        elif after is not After.NOTHING:
            try:
                await self._caller_flush()
            except StoreError:
                if after is After.FLUSH_OR_RAISE:
                    raise

    async def _acquire_slot(self, request: AcquireSlot) -> None:
        granted = asyncio.Event()
        request.ticket.waker = granted.set
        if not request.ticket.granted:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(request.timeout):
                    await granted.wait()

    async def _wait_for_room(self, request: WaitForRoom) -> bool:
        self._wake.set()
        has_room = self._engine.pending.has_room
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.backpressure_timeout_seconds):
                while not has_room(request.session_id):
                    await self._settled.wait()
        return has_room(request.session_id)

    def _room_may_be_free(self) -> None:
        """Wake every task waiting for room in the pending buffer."""
        self._settled.set()
        self._settled = asyncio.Event()

    def _invalidated(self, session_ids: Collection[str] | None, ended: bool) -> None:
        """Store callback, on the loop: other servers ended or changed these sessions."""
        self._engine.invalidate(session_ids, ended=ended)
        self._room_may_be_free()

    async def _start(self) -> None:
        """Bind to the running loop and watch the store (first use); (re)start the flusher.

        A flusher task cancelled from outside (its write, if any, put back) is replaced here.
        """
        loop = asyncio.get_running_loop()
        flusher = self._flusher
        if self._loop is loop and flusher is not None and not flusher.done():
            return
        if self._loop is not None and self._loop is not loop:
            raise SessionError(
                "an AsyncSessionService runs on the event loop that first used it; "
                "create one service per event loop"
            )
        first, self._loop = self._loop is None, loop
        self._flusher = loop.create_task(self._background(), name=FLUSHER_NAME)
        watch = getattr(self._store, "watch", None)
        if first and watch is not None:  # shared with other servers: end at once, hear theirs
            self._engine.pending.prompt_ends = True
            await watch(self._invalidated)

    # -- flushing ----------------------------------------------------------------------

    async def _caller_flush(self) -> int:
        """A flush a caller waits for, shielded: a cancelled caller does not cancel it."""
        task = asyncio.ensure_future(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._flush_task_done)
        return await asyncio.shield(task)

    def _flush_task_done(self, task: asyncio.Task[int]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # logged by flush_failed; its caller may have stopped waiting

    async def _flush(self) -> int:
        """Write one batch of everything pending; a failed or cancelled one stays pending."""
        async with self._flush_lock:
            flush = self._engine.take_flush()
            if flush is None:
                return 0
            started = time.monotonic()
            try:
                result = await self._store.write(flush.operations, time.time())
            except BaseException as exc:
                error = driver.flush_failed(self._engine, flush, exc, str(self._store.url))
                self._room_may_be_free()
                if error is exc:
                    raise
                raise error from exc
            self._engine.flush_succeeded(flush, result, time.monotonic() - started)
            self._room_may_be_free()
            return len(flush.operations)

    async def _background(self) -> None:
        while not self._stopping:
            if not self._engine.flush_due():
                self._wake.clear()
                delay = self._schedule.wake_at(self._engine) - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, delay)):
                        await self._wake.wait()
            if self._stopping:
                return
            try:
                await self._background_round()
            except Exception:  # the flusher must survive anything; the error is in stats
                logger.exception("background session work failed")

    async def _background_round(self) -> None:
        engine = self._engine
        chores = self._schedule.chores(engine)
        if chores.flush:
            with contextlib.suppress(Exception):  # kept pending, logged; retried after backoff
                await self._flush()
        if chores.cleanup:
            evicted = engine.cleanup()
            self._schedule.cleaned(evicted, await self._store.purge_expired(time.time()))
        if chores.poll and await self._store.poll():
            engine.invalidate(None)

    async def _stop_flusher(self, seconds: float) -> None:
        """Let the flusher finish its round within ``seconds``, else cancel it."""
        task = self._flusher
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return
        self._wake.set()
        await asyncio.wait({task}, timeout=seconds)
        if not task.done():
            task.cancel()  # a write it was doing puts its batch back
            await asyncio.wait({task})

    async def _final_flush(self, final: FinalFlush) -> None:
        while True:
            try:
                if final.remaining() > 0:
                    async with asyncio.timeout(final.remaining()):
                        final.written += await self._flush()
            except TimeoutError:
                final.timed_out()
            except Exception as exc:
                final.failed(exc)
            pause = final.pause(self._engine)
            if pause is None:
                return
            await asyncio.sleep(pause)


class _InlineExecutor(ThreadPoolExecutor):
    """Runs each call at once in the caller's thread: at interpreter exit no worker thread
    takes new work, and blocking the private loop of the last flush harms nobody."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _exit_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_InlineExecutor())
    return loop


def _flush_at_exit(ref: weakref.ref[AsyncSessionService]) -> None:
    """Interpreter exit without `shutdown`: write what is pending.

    On the service's loop if it still runs (in another thread), else on a private loop.
    """
    service = ref()
    if service is None or service._closed:
        return
    loop = service._loop
    try:
        if loop is not None and loop.is_running():
            done = asyncio.run_coroutine_threadsafe(service.shutdown(), loop)
            done.result(service.settings.shutdown_timeout_seconds + 1.0)
        else:
            with asyncio.Runner(loop_factory=_exit_loop) as runner:
                runner.run(service.shutdown())
    except Exception:
        logger.exception("writing pending sessions at exit failed (await shutdown() instead)")
