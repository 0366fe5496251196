"""The store contract: what a store must do for the services, sync and asyncio."""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Protocol, runtime_checkable

from pooled_sessions.codec import Changes, Operation, Record, WriteResult


@runtime_checkable
class Store(Protocol):
    """A blocking session store.

    ``write`` applies a whole batch or raises (then nothing may be assumed written, and the
    same batch is sent again: applying it twice must be harmless, a create included). It
    refuses upserts of ended ids and partial upserts of sessions it lacks
    (``WriteResult.refused``) and creates of ids another session holds (``taken``); see
    `codec.Upsert`. ``poll`` reports what other processes changed since this store last
    looked (`codec.Changes`: a bool will do).
    """

    url: str

    def load(self, session_id: str) -> Record | None: ...

    def load_user(self, username: str) -> Mapping[str, Record]: ...

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult: ...

    def purge_expired(self, now: float) -> int: ...

    def poll(self) -> Changes: ...

    def scan(self) -> Iterator[tuple[str, Record]]: ...

    def count(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    """The asyncio twin of `Store`: the same methods, as coroutines."""

    url: str

    async def load(self, session_id: str) -> Record | None: ...

    async def load_user(self, username: str) -> Mapping[str, Record]: ...

    async def write(self, operations: Sequence[Operation], now: float) -> WriteResult: ...

    async def purge_expired(self, now: float) -> int: ...

    async def poll(self) -> Changes: ...

    def scan(self) -> AsyncIteratorOfRecords: ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


AsyncIteratorOfRecords = AsyncIterator[tuple[str, Record]]
"""What `AsyncStore.scan` returns (an ``async def`` with ``yield`` is one)."""


Invalidate = Callable[[Collection[str] | None, bool], None]
"""``callback(session_ids, ended)``: other servers ended (``ended=True``) or changed these
sessions; ``session_ids`` None means anything may have changed (events were lost)."""


@runtime_checkable
class TombstoneStore(Store, Protocol):
    """A store that can tell an ended id from one never used (optional ``ended``).

    ``ended(id)`` is True while the store keeps the id's tombstone (``tombstone_ttl_seconds``),
    whichever process ended it; the engine then refuses ``create_session(session_id=id)``,
    so ids are never reused. Every built-in store has it.
    """

    def ended(self, session_id: str) -> bool: ...


@runtime_checkable
class AsyncTombstoneStore(AsyncStore, Protocol):
    """The asyncio twin of `TombstoneStore`."""

    async def ended(self, session_id: str) -> bool: ...


@runtime_checkable
class CheckedStore(Store, Protocol):
    """A store that can prove at start that it will take writes (optional ``check``).

    ``check()`` raises `StoreUnavailableError` saying why (unreachable, authentication
    failed, read-only, a directory that is not writable, ...), in one round trip at most.
    `SessionService` calls it in its constructor and `AsyncSessionService` at its first
    use, unless the ``check_store`` setting is False, so a store that cannot work fails
    the start instead of every flush.
    """

    def check(self) -> None: ...


@runtime_checkable
class AsyncCheckedStore(AsyncStore, Protocol):
    """The asyncio twin of `CheckedStore`."""

    async def check(self) -> None: ...


@runtime_checkable
class BulkLoadStore(Store, Protocol):
    """A store that reads many sessions at once (optional ``load_many``).

    ``load_many(ids)`` maps each id to what ``load(id)`` returns, for one refresh or round
    trip in place of one per id (the command-line tools check a migrated copy a batch at
    a time).
    """

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]: ...


@runtime_checkable
class AsyncBulkLoadStore(AsyncStore, Protocol):
    """The asyncio twin of `BulkLoadStore`."""

    async def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]: ...


@runtime_checkable
class CompactStore(Store, Protocol):
    """A store that keeps a log of changes beside a snapshot (optional ``compact``).

    ``compact()`` folds the log into a new snapshot now, True if there was anything to
    fold (the file stores do it on their own when the journal outgrows its bound;
    ``pooled-sessions cleanup`` does it at once).
    """

    def compact(self) -> bool: ...


@runtime_checkable
class AsyncCompactStore(AsyncStore, Protocol):
    """The asyncio twin of `CompactStore`."""

    async def compact(self) -> bool: ...


@runtime_checkable
class SlotStore(Store, Protocol):
    """A store that counts live-session slots for every app server sharing it (Redis).

    ``claim_slot(id, expires_at, limit, replaces)`` takes one of ``limit`` slots
    atomically, True if granted (or hands over the slot one of ``replaces``, sessions this
    server ended, still holds); the store frees a slot when its session ends or expires.
    A write never adds a slot: an `Upsert` with ``rotated_from`` takes the slot of the
    first of those ids still holding one. With a pool configured, the engine claims one
    after its own for each new session (``max_total`` across servers).
    """

    def claim_slot(
        self, session_id: str, expires_at: float, limit: int, replaces: Sequence[str] = ()
    ) -> bool: ...


@runtime_checkable
class AsyncSlotStore(AsyncStore, Protocol):
    """The asyncio twin of `SlotStore`."""

    async def claim_slot(
        self, session_id: str, expires_at: float, limit: int, replaces: Sequence[str] = ()
    ) -> bool: ...


@runtime_checkable
class WatchableStore(Store, Protocol):
    """A store shared with other servers that pushes their changes (optional ``watch``).

    Driver contract (`SessionService` does exactly this in its constructor):
    - call ``store.watch(callback)`` once, after the engine exists and before serving;
    - set ``engine.pending.prompt_ends = True``, so an end is flushed at once and other
      servers refuse the session within milliseconds rather than after the save delay;
    - ``callback(ids, ended)`` runs on a thread the store owns: take the driver's lock and
      call ``engine.invalidate(ids, ended=ended)`` (then wake anyone waiting on it). It
      must not call the store, and must be quick.
    ``close()`` stops the watching; no callback runs after it returns. ``watch`` may
    return a callable the driver calls (outside its lock) before each call reads its
    cache, to apply the changes the store has already received (Redis: `catch_up`).
    """

    def watch(self, callback: Invalidate) -> Callable[[], None] | None: ...


@runtime_checkable
class AsyncWatchableStore(AsyncStore, Protocol):
    """The asyncio twin of `WatchableStore`.

    ``await store.watch(callback)`` from the running loop (for example at the driver's
    first use, before serving), and set ``engine.pending.prompt_ends = True``. The
    callback runs in the event loop's thread, from a task the store owns: it must not
    block or await; it calls ``engine.invalidate(ids, ended=ended)`` directly (under the
    driver's lock if the driver has one). ``await store.close()`` stops the task. ``watch``
    may return a callable the driver calls before each call reads its cache: it returns
    None, or an awaitable to await first, which applies the changes the store has already
    received (Redis: the events waiting in the subscription's socket).
    """

    async def watch(self, callback: Invalidate) -> Callable[[], Awaitable[None] | None] | None: ...


__all__ = [
    "AsyncBulkLoadStore",
    "AsyncCheckedStore",
    "AsyncCompactStore",
    "AsyncIteratorOfRecords",
    "AsyncSlotStore",
    "AsyncStore",
    "AsyncTombstoneStore",
    "AsyncWatchableStore",
    "BulkLoadStore",
    "CheckedStore",
    "CompactStore",
    "Invalidate",
    "Iterator",
    "SlotStore",
    "Store",
    "TombstoneStore",
    "WatchableStore",
]
