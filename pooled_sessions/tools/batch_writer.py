"""Batches written to a store on a thread of their own, so reading overlaps the store's I/O.

At most ``depth`` batches wait, so memory stays bounded. A failed write stops the writer;
the error is raised in the caller's thread at its next `put` or at `close`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence

from pooled_sessions.adapters.protocol import Store
from pooled_sessions.codec import Operation, WriteResult

Written = Callable[[Sequence[Operation], WriteResult], None]
_DONE: list[Operation] = []


class BackgroundWriter:
    """Feed batches with `put`; `close` waits for the last write and re-raises any error."""

    def __init__(self, store: Store, written: Written, depth: int = 1) -> None:
        self._store = store
        self._written = written
        self._queue: queue.Queue[list[Operation]] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(
            target=self._run, name="pooled-sessions-writer", daemon=True
        )
        self._thread.start()

    def put(self, batch: list[Operation]) -> None:
        """Queue one batch (waits while ``depth`` are queued); raises a failed write's error."""
        self._raise()
        self._queue.put(batch)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise a failed write's error."""
        self._queue.put(_DONE)
        self._thread.join()
        self._raise()

    def cancel(self) -> None:
        """Drop what is queued and stop after the write in progress (on an error or ^C)."""
        self._cancelled = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_DONE)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _DONE:
                return
            if self._error is not None or self._cancelled:
                continue  # keep draining, so a producer never blocks on a dead writer
            try:
                self._written(batch, self._store.write(batch, time.time()))
            except BaseException as exc:  # handed to the producer's thread
                self._error = exc
