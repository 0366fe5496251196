"""What every contract mixin stands on: opening stores, calling them sync or asyncio, cleanup.

A contract test calls a store method and hands the result to `StoreHarness.call`: a
blocking store's result comes back as it is, an asyncio store's coroutine is run on an
event loop in a background thread (one per test, shared by every store the test opens).
So each contract is written once and runs on both kinds of store.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Any, TypeVar

import pytest

from pooled_sessions.codec import Operation, WriteResult
from pooled_sessions.config import Settings

T = TypeVar("T")
StoreFactory = Callable[[Settings], Any]
"""Opens a new store object on this test's backing store: every call, the same sessions."""
CALL_SECONDS = 60.0


class LoopThread:
    """An event loop running in a daemon thread until `close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="contract-loop")
        self._thread.daemon = True
        self._thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the loop and return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result(CALL_SECONDS)

    def close(self) -> None:
        """Let go of the loop's worker threads and async generators, then stop it."""
        self.run(self.loop.shutdown_asyncgens())
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_SECONDS)
        self.loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _listed(items: AsyncIterable[T]) -> list[T]:
    return [item async for item in items]


class Heard:
    """A watch callback that remembers what it was told, for a test to wait on."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.events: list[tuple[frozenset[str] | None, bool]] = []

    def __call__(self, session_ids: Collection[str] | None, ended: bool) -> None:
        with self._changed:
            self.events.append((None if session_ids is None else frozenset(session_ids), ended))
            self._changed.notify_all()

    def told(self, session_id: str, ended: bool) -> bool:
        """True once an event named ``session_id`` with this ``ended`` flag."""
        return any(ids is not None and session_id in ids and e is ended for ids, e in self.events)

    def wait(self, session_id: str, ended: bool, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for `told`; its final answer."""
        with self._changed:
            return self._changed.wait_for(lambda: self.told(session_id, ended), timeout)


class StoreHarness:
    """The store objects of one test, the loop that runs asyncio ones, and their cleanup."""

    def __init__(self, factory: StoreFactory) -> None:
        self._factory = factory
        self._open: list[Any] = []
        self._loop: LoopThread | None = None

    def open(self, settings: Settings) -> Any:
        """A new store object on the test's backing store, closed at teardown."""
        store = self._factory(settings)
        self._open.append(store)
        return store

    def call(self, result: Awaitable[T] | T) -> T:
        """The result of a store call: awaited on the test's loop if it is awaitable."""
        if not inspect.isawaitable(result):
            return result
        if self._loop is None:
            self._loop = LoopThread()
        value: T = self._loop.run(result)
        return value

    def listed(self, items: Iterable[T] | AsyncIterable[T]) -> list[T]:
        """Every item of a sync or async iterable (a store's ``scan``)."""
        if isinstance(items, AsyncIterable):
            return self.call(_listed(items))
        return list(items)

    def close(self, store: Any) -> None:
        """Close one store object now (once: teardown leaves it alone)."""
        self._open.remove(store)
        self.call(store.close())

    def close_all(self) -> None:
        """Close every store object still open (each, even if one fails), then the loop."""
        with contextlib.ExitStack() as closing:
            closing.callback(self._close_loop)
            for store in list(self._open):
                closing.callback(self.close, store)

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class StoreContractBase:
    """The base of every contract mixin; a concrete class provides ``store_factory``.

    ``store_factory`` is a pytest fixture returning a `StoreFactory`: a callable taking
    `Settings` and opening a new store object on one backing store of this test (a fresh
    one per test; every call of the same test reaches the same sessions, as two app
    servers sharing a store would).
    """

    watch_timeout = 5.0
    """Longest wait for a watch event another store object caused."""
    harness: StoreHarness

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        """Overridden by the concrete test class."""
        raise NotImplementedError(f"{type(self).__name__} must define a store_factory fixture")

    @pytest.fixture(autouse=True)
    def _store_harness(self, store_factory: StoreFactory) -> Iterator[None]:
        self.harness = StoreHarness(store_factory)
        yield
        self.harness.close_all()

    def open(self, **settings: Any) -> Any:
        """A new store object on this test's backing store, with these settings."""
        return self.harness.open(Settings(**settings))

    def call(self, result: Awaitable[T] | T) -> T:
        """See `StoreHarness.call`."""
        return self.harness.call(result)

    def write(
        self, store: Any, operations: Sequence[Operation], now: float | None = None
    ) -> WriteResult:
        """``store.write(operations, now)``, checked to return a `WriteResult`."""
        result = self.call(store.write(operations, time.time() if now is None else now))
        assert isinstance(result, WriteResult), f"write returned {result!r}, not a WriteResult"
        return result

    def scan(self, store: Any) -> dict[str, Any]:
        """What ``store.scan()`` yields, by session id (each id at most once)."""
        pairs = self.harness.listed(store.scan())
        found = dict(pairs)
        assert len(found) == len(pairs), "scan yielded a session more than once"
        return found


def sleep_past(moment: float) -> None:
    """Sleep until the wall clock has passed ``moment`` (a store's expiry is wall-clock)."""
    while (left := moment - time.time()) >= 0:
        time.sleep(left + 0.01)
