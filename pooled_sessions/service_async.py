"""AsyncSessionService: the engine driven on one event loop, with one flusher task.

The same flows as `SessionService` (service_base.py), answered with asyncio: awaiting an
asyncio store, and waiting for a pool slot or for room in the pending buffer with
events. Everything runs on the loop that first used the service, so no lock guards the
engine: it is only touched between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar, cast

from pooled_sessions.adapters import AsyncStore, check_ready_async
from pooled_sessions.engine.requests import AcquireSlot, Flow, FlushNow
from pooled_sessions.errors import SessionError
from pooled_sessions.model import ShutdownReport
from pooled_sessions.service_base import ServiceBase
from pooled_sessions.service_gc import Freezer

T = TypeVar("T")
logger = logging.getLogger("session_service")
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
        self._guard = contextlib.nullcontext()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._catch_up: Callable[[], Awaitable[None] | None] | None = None  # from `watch`
        self._wake = asyncio.Event()  # the flusher: a flush may be due
        self._settled = asyncio.Event()  # replaced each time a flush ended or room came free
        self._tasks: set[asyncio.Task[int]] = set()  # flushes callers await (shielded)
        self._turns: dict[int, asyncio.Future[None]] = {}  # callers waiting for a commit
        self._done = asyncio.Event()
        self._freezer = Freezer()  # long-lived sessions out of the collector's walk

    # -- the public API (create_session ... end_session: ServiceBase, `Published`) ------

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

    def exclusive(
        self, username: str, timeout: float = 5.0
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold ``username`` alone among every app server sharing the store (a login).

        ``async with svc.exclusive(user):`` on a store with ``user_lock`` (Redis) writes the
        changes made inside before the lock goes, so the next holder sees them; elsewhere
        it does nothing.
        """
        hold: contextlib.AbstractAsyncContextManager[None] = self._user_hold(
            username, timeout, self.force_save
        )
        return hold

    async def stats(self) -> dict[str, Any]:
        """Counters: pending changes, flushes and their durations, failures, live sessions."""
        return self._stats()

    async def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Flush within ``timeout`` seconds, stop the flusher and close the store; idempotent.

        The limit is firm: a write still running at the deadline is cancelled (its batch
        stays pending) and reported unsaved. Later calls wait for the first to finish.
        """
        final = self._begin_shutdown(timeout)
        if final is None:
            await self._done.wait()
            return ShutdownReport(0)
        try:
            await self._stop_flusher(final.remaining())
            await self._drive(self._finishing(final))
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

    # -- driving a flow ----------------------------------------------------------------

    @classmethod
    def _publish(
        cls, build: Callable[..., Flow[Any]], cached: Callable[..., Any] | None, reads: bool
    ) -> Callable[..., Any]:
        async def method(self: AsyncSessionService, /, *args: Any, **kwargs: Any) -> Any:
            if not self._serving():
                await self._start()
            else:
                if reads and self._catch_up is not None and (waiting := self._catch_up()):
                    await waiting  # events already received come first
                if cached is not None:
                    done = cached(self, await self._news(), *args, **kwargs)
                    if done is not None:
                        return done
            return await self._drive(build(self, *args, **kwargs))

        return method

    async def _news(self) -> bool:
        """`SessionService._news`, the store asked on the loop."""
        if not self._engine.polls_first:
            return False
        try:
            changed = await self._store.poll()
        except Exception:  # the flow asks again, and serves the cache if it still cannot
            return False
        return self._engine.polled(changed)

    async def _drive(self, flow: Flow[T]) -> T:
        """Run ``flow`` to its end on the loop, awaiting each request's answer; a failed or
        cancelled answer is thrown into the flow."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                return cast(T, stop.value)
            try:
                reply, error = await self._answer(request), None
            except BaseException as exc:  # the flow cleans up (a pool wait is withdrawn)
                reply, error = None, exc

    def _serving(self) -> bool:
        """True when this loop's flusher runs; `ServiceClosedError` after shutdown."""
        self._check_open()
        flusher = self._flusher
        return (
            flusher is not None and not flusher.done() and self._loop is asyncio.get_running_loop()
        )

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
        if self._loop is None and self.settings.check_store:  # __init__ cannot await it
            await check_ready_async(self._store)
        first, self._loop = self._loop is None, loop
        self._flusher = loop.create_task(self._background(), name=FLUSHER_NAME)
        watching = self._watch_store() if first else None
        if watching is not None:
            self._catch_up = await watching

    async def _flush(self) -> int:
        """Write one batch of everything pending; one flush at a time."""
        written = await self._drive(self._flushing())
        self._freezer.after_flush(self._engine)
        return written

    async def _await_turn(self, seq: int) -> None:
        waits = self._engine.commits.waits
        while waits(seq):
            turn = self._turns[seq] = asyncio.get_running_loop().create_future()
            try:
                await turn
            finally:
                del self._turns[seq]

    async def _await_flush(self, round_: int) -> None:
        commits = self._engine.commits
        while commits.rounds == round_:
            await self._settled.wait()

    def _flush_now(self, request: FlushNow) -> Awaitable[int]:
        if not request.background:
            return self._caller_flush()
        return self._flush() if request.limit is None else self._flush_within(request.limit)

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

    async def _flush_within(self, seconds: float) -> int:
        """A flush cancelled after ``seconds`` (none at all with no time left)."""
        if seconds <= 0:
            return 0
        async with asyncio.timeout(seconds):
            return await self._flush()

    async def _wake_flusher(self) -> None:
        self._wake.set()

    def _notify(self, flusher: bool = True) -> None:
        if flusher:
            self._wake.set()
        self._settled.set()
        self._settled = asyncio.Event()
        waits = self._engine.commits.waits
        for seq, turn in self._turns.items():
            if not (waits(seq) or turn.done()):
                turn.set_result(None)

    def _time_jumped(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify)

    async def _wait_for_room(self, session_id: str) -> bool:
        self._wake.set()
        has_room = self._engine.pending.has_room
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.backpressure_timeout_seconds):
                while not has_room(session_id):
                    await self._settled.wait()
        return has_room(session_id)

    async def _acquire_slot(self, request: AcquireSlot) -> None:
        granted = asyncio.Event()
        request.ticket.waker = granted.set
        if not request.ticket.granted:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(request.timeout):
                    await granted.wait()

    def _pause(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)

    # -- background work ---------------------------------------------------------------

    async def _background(self) -> None:
        while not self._stopping:
            self._wake.clear()
            rest = self._rest()
            if rest > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(rest):
                        await self._wake.wait()
            if self._stopping:
                return
            try:
                await self._drive(self._round())
            except Exception:  # the flusher must survive anything; the error is in stats
                logger.exception("background session work failed")

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

    @staticmethod
    def _at_exit(ref: weakref.ref[Any]) -> None:
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
