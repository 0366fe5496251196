"""Helpers to drive the sans-I/O engine in tests: a settable clock and an in-memory store."""

from __future__ import annotations

from typing import Any, TypeVar

from pooled_sessions.adapters.record_table import RecordTable
from pooled_sessions.codec import Changes, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.engine.engine import Engine, Flow, Flush, Load, LoadUser, WaitForRoom
from pooled_sessions.engine.requests import Commit, FlushNow, Poll, WakeFlusher

T = TypeVar("T")
EPOCH = 1_700_000_000.0


class Clock:
    """Wall and monotonic time that only move when a test says so."""

    def __init__(self) -> None:
        self.now = EPOCH
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class Rig:
    """An engine, its clock and a `RecordTable` standing in for the store.

    ``write_behind`` is True unless a test says otherwise: most engine tests look at the
    write-behind buffer itself (coalescing, thresholds, backoff). With
    ``write_behind=False`` (the default mode of the services) each change asks for its
    `Commit`, which the rig answers with a flush to the table, or, while ``down`` holds
    an error, with a failed flush whose error is thrown into the operation. ``changed``:
    the answer to the next `Poll` (another process wrote the table: True, or which ids).
    """

    def __init__(self, table: RecordTable | None = None, **settings: Any) -> None:
        settings.setdefault("write_behind", True)
        self.settings = Settings(backend="memory://", **settings)
        self.clock = Clock()
        self.table = table if table is not None else RecordTable()
        self.engine = Engine(self.settings, clock=self.clock.wall, monotonic=self.clock.monotonic)
        self.room = True
        self.down: BaseException | None = None
        self.changed: Changes = False
        self.requests: list[object] = []

    def run(self, flow: Flow[T]) -> T:
        """Run one engine operation, answering its requests from the table (a flush it
        asks for is written to the table at once)."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                result: T = stop.value
                return result
            self.requests.append(request)
            reply, error = None, None
            if isinstance(request, Commit):
                error = self.commit(request.seq)
            elif isinstance(request, Poll):
                reply, self.changed = self.changed, False
            elif isinstance(request, Load):
                reply = self.table.load(request.session_id)
            elif isinstance(request, LoadUser):
                reply = self.table.load_user(request.username)
            elif isinstance(request, FlushNow):
                reply = len(self.engine.pending)
                self.flush()
            elif isinstance(request, WakeFlusher):
                reply = None
            else:
                assert isinstance(request, WaitForRoom)
                reply = self.room

    def commit(self, seq: int | None = None) -> BaseException | None:
        """Answer a `Commit`: flush, or fail the flush while ``down``; the error to throw
        (with ``seq``, also what the store's refusal of that change means, as a driver's
        group commit hears it from `CommitLog.verdict`)."""
        if self.down is None:
            self.flush()
            if seq is not None:
                try:
                    self.engine.commits.verdict(seq)
                except Exception as exc:
                    return exc
            return None
        flush = self.engine.take_flush()
        if flush is not None:
            self.engine.flush_failed(flush, self.down)
        return self.down

    def take(self) -> Flush:
        flush = self.engine.take_flush()
        assert flush is not None, "a flush was expected to be pending"
        return flush

    def flush(self, *, reloaded: bool = False) -> WriteResult:
        """Take every pending change and apply it to the table, as a store would."""
        flush = self.engine.take_flush()
        if flush is None:
            return WriteResult()
        result = self.table.apply(flush.operations)
        result = WriteResult(result.refused, reloaded, result.taken)
        self.engine.flush_succeeded(flush, result, 0.001)
        return result

    def fail(self, flush: Flush) -> float:
        return self.engine.flush_failed(flush, OSError(28, "No space left on device"))
