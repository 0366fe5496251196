"""The flows every service runs for itself: the group commit, the flush, the flusher's
rounds and shutdown's last flushes (`ServiceFlows`, a base of `ServiceBase`).

Each is a generator of requests (engine/requests.py) that ``_drive`` runs, so they are
written once for the thread and the asyncio driver; which caller leads a commit and what a
failed write undoes are the engine's decisions (engine/commits.py, engine/batches.py).
"""

from __future__ import annotations

import contextlib
import logging

from pooled_sessions.clock import Clock
from pooled_sessions.config import Settings
from pooled_sessions.engine.commits import Turn
from pooled_sessions.engine.engine import Engine
from pooled_sessions.engine.requests import (
    FLUSH_NOW,
    POLL,
    AwaitFlush,
    AwaitTurn,
    Flow,
    Flush,
    FlushNow,
    Pause,
    Purge,
    Write,
)
from pooled_sessions.errors import StoreError, StoreUnavailableError
from pooled_sessions.service_schedule import FinalFlush, Schedule

logger = logging.getLogger("session_service")


class ServiceFlows:
    """The service's own flows, over the state `ServiceBase` builds."""

    settings: Settings
    _engine: Engine
    _clock: Clock
    _schedule: Schedule
    _url: str
    _shared_seen: bool
    leads_in_flow: bool = False
    """True when a commit's leader runs the flush inside its own flow (a thread's call);
    False when the driver runs it apart (`FlushNow`): an asyncio service shields it in a
    task of its own, so a cancelled caller does not cancel the write of the others."""

    def _notify(self, flusher: bool = True) -> None:
        """Wake every caller waiting for room or a flush, and the flusher unless ``flusher``
        is False (``_guard`` held)."""
        raise NotImplementedError

    def _committing(self, seq: int) -> Flow[None]:
        """The group commit: return once change ``seq`` is committed. While a flush is in
        flight, wait for it; then the earliest caller whose change is still pending leads
        the next flush, which takes every pending change, and the others wait for it.
        Raises the failure of the flush that held the change (undone by then)."""
        commits = self._engine.commits
        while (turn := commits.verdict(seq)) is not Turn.COMMITTED:
            try:
                if turn is Turn.WAIT:
                    yield AwaitTurn(seq)
                    continue  # woken: settled, or named to lead
                try:
                    if self.leads_in_flow:
                        yield from self._flushing()
                    else:
                        yield FLUSH_NOW
                except StoreError:
                    pass  # the next verdict says what the failure meant for this change
            except BaseException:  # left (cancelled) while named or leading: the next leads
                self._stand_down(seq)
                raise
            self._stand_down(seq)  # its flush began, or there was nothing left to flush

    def _stand_down(self, seq: int) -> None:
        """The caller of ``seq`` no longer leads (`CommitLog.stand_down`); wake whoever is
        named next."""
        if self._engine.commits.stand_down(seq):
            self._notify()

    def _flushing(self) -> Flow[int]:
        """One flush of everything pending, after the one in flight; returns the sessions
        written.

        A failed (or cancelled) write keeps its batch pending (undoing its changes by
        default) and raises the store's own error, or `StoreUnavailableError` with the
        original as its cause.
        """
        engine, clock = self._engine, self._clock
        while engine.commits.flushing:
            yield AwaitFlush(engine.commits.rounds)
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
        self._notify(flusher=engine.flush_due())  # its timer stands: a wake per commit is costly
        if result.reloaded:  # another process had written the store since this one
            self._shared_store_seen()
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
        if chores.poll and (changes := (yield POLL)):
            engine.heard(changes)
            self._shared_store_seen()

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

    def _shared_store_seen(self) -> None:
        """Another process wrote the store: with ``write_behind`` say once that it should not."""
        if self.settings.write_behind and not self._shared_seen:
            self._shared_seen = True
            logger.warning(
                "another process writes to %s, but write_behind=True holds this process's "
                "changes in memory until they are flushed, so the processes read stale or "
                "ended sessions; set write_behind=False (POOLED_SESSIONS_WRITE_BEHIND=false) "
                "when several processes share a store",
                self._url,
            )


def flush_failed(engine: Engine, flush: Flush, error: BaseException, url: str) -> BaseException:
    """Hand a failed (or cancelled) batch back to the engine, which undoes its changes by
    default and keeps the rest pending; returns the exception the callers raise.

    A store's own errors pass as they are; anything else is reported as the store being
    unavailable (with the original as its cause), and cancellation stays cancellation.
    """
    told = error
    if isinstance(error, Exception) and not isinstance(error, StoreError):
        told = StoreUnavailableError(f"store {url} failed: {error}")
        told.__cause__ = error
    count = len(flush.taken)
    delay = engine.flush_failed(flush, error, told)
    logger.warning("flush of %d session(s) failed, retry in %.1f s: %s", count, delay, error)
    return told
