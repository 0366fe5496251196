"""Stores opened by URL for the command-line tools: read-only sources, writable targets.

A source is only ever read. A sessions file (``file://``, ``aiofile://`` or a path) is
streamed record by record, with its journal laid over it, without opening its store, so
even the lock file and stray temp files beside it stay as they are. Any other URL opens
its store and reads ``scan()``.
A target is a blocking `Store`; an asyncio-only store is driven on a private event loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

from pooled_sessions.adapters import (
    ASYNC_STORES,
    SYNC_STORES,
    AsyncStore,
    Store,
    open_async_store,
    open_store,
)
from pooled_sessions.adapters.file import journal
from pooled_sessions.adapters.file.stream import StoreStream
from pooled_sessions.adapters.protocol import AsyncBulkLoadStore, AsyncCompactStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Changes, Operation, Record, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.errors import StoreUnavailableError
from pooled_sessions.redaction import redact

T = TypeVar("T")
FILE_SCHEMES = frozenset({"file", "aiofile"})
BRIDGE_CHUNK = 1000


class Source(Protocol):
    """Sessions to read: records as they stream, then any tombstones (ended sessions) seen."""

    url: str

    def records(self) -> Iterator[tuple[str, Record]]: ...

    def tombstones(self) -> Mapping[str, float]: ...

    def close(self) -> None: ...


class FileSource:
    """A sessions file and its journal read as a stream; nothing beside them is touched."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url.display
        self.path = url.path
        self._stream = StoreStream(self.path)
        require_file(self.path)

    def records(self) -> Iterator[tuple[str, Record]]:
        self._stream = StoreStream(self.path)
        return self._stream.records()

    def tombstones(self) -> Mapping[str, float]:
        """Tombstones of the last complete `records()` pass."""
        return self._stream.tombstones

    def size(self) -> int:
        """Bytes of the snapshot and its journal on disk."""
        extra = journal.path_of(self.path)
        return os.path.getsize(self.path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)

    def close(self) -> None:
        """Nothing is held open between passes."""


class StoreSource:
    """Any store, read through its ``scan()``."""

    def __init__(self, store: Store) -> None:
        self.url = redact(store.url)
        self.store = store

    def records(self) -> Iterator[tuple[str, Record]]:
        return self.store.scan()

    def tombstones(self) -> Mapping[str, float]:
        """A store lists no tombstones through its protocol."""
        return {}

    def close(self) -> None:
        self.store.close()


class BridgedStore:
    """An asyncio store used as a blocking one, on an event loop of its own."""

    def __init__(self, url: StoreURL, settings: Settings) -> None:
        self._runner = asyncio.Runner()
        try:
            self._store: AsyncStore = self._runner.run(_opened(url, settings))
        except BaseException:
            self._runner.close()
            raise
        self.url = redact(self._store.url)

    def _run(self, step: Awaitable[T]) -> T:
        return self._runner.run(_awaited(step))

    def load(self, session_id: str) -> Record | None:
        return self._run(self._store.load(session_id))

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        """Several sessions in one turn of the loop (one call where the store has one)."""
        return self._run(_loaded(self._store, session_ids))

    def load_user(self, username: str) -> Mapping[str, Record]:
        return self._run(self._store.load_user(username))

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        return self._run(self._store.write(operations, now))

    def purge_expired(self, now: float) -> int:
        return self._run(self._store.purge_expired(now))

    def compact(self) -> bool:
        """Fold a file store's journal into a new snapshot (False: nothing to fold, or a
        store that keeps no journal)."""
        if not isinstance(self._store, AsyncCompactStore):
            return False
        return self._run(self._store.compact())

    def poll(self) -> Changes:
        return self._run(self._store.poll())

    def count(self) -> int:
        return self._run(self._store.count())

    def scan(self) -> Iterator[tuple[str, Record]]:
        pairs = self._store.scan().__aiter__()

        async def take() -> list[tuple[str, Record]]:
            chunk: list[tuple[str, Record]] = []
            while len(chunk) < BRIDGE_CHUNK:
                try:
                    chunk.append(await pairs.__anext__())
                except StopAsyncIteration:
                    break
            return chunk

        while chunk := self._runner.run(take()):
            yield from chunk

    def close(self) -> None:
        try:
            self._run(self._store.close())
        finally:
            self._runner.close()


async def _opened(url: StoreURL, settings: Settings) -> AsyncStore:
    """Open inside the loop, for stores that bind to the running loop when built."""
    return open_async_store(url, settings)


async def _awaited(step: Awaitable[T]) -> T:
    return await step


async def _loaded(store: AsyncStore, session_ids: Sequence[str]) -> dict[str, Record | None]:
    if isinstance(store, AsyncBulkLoadStore):
        return await store.load_many(session_ids)
    return {sid: await store.load(sid) for sid in session_ids}


def size_hint(source: Source) -> int | None:
    """The sessions a pass over ``source`` will read, when its store can say at once (its
    count); None for a sessions file, which only a full read counts."""
    return source.store.count() if isinstance(source, StoreSource) else None


def require_file(path: str) -> None:
    """Refuse a sessions file that does not exist (a typo, not an empty store)."""
    if not os.path.exists(path):
        raise StoreUnavailableError(f"no sessions file at {path}")


def parse(url: str) -> StoreURL:
    """The parsed URL (a plain path means the JSON file store)."""
    return StoreURL.parse(url)


def open_target(url: str | StoreURL, settings: Settings) -> Store:
    """The store a URL names, as a blocking store (asyncio-only stores are bridged)."""
    parsed = url if isinstance(url, StoreURL) else parse(url)
    if parsed.scheme not in SYNC_STORES and parsed.scheme in ASYNC_STORES:
        return BridgedStore(parsed, settings)
    return open_store(parsed, settings)


def open_source(url: str | StoreURL, settings: Settings) -> Source:
    """A read-only view of the sessions a URL names."""
    parsed = url if isinstance(url, StoreURL) else parse(url)
    if parsed.scheme in FILE_SCHEMES:
        return FileSource(parsed)
    return StoreSource(open_target(parsed, settings))


def same_location(a: StoreURL, b: StoreURL) -> bool:
    """True when two URLs surely name the same sessions (the same file, or the same URL)."""
    if a.scheme in FILE_SCHEMES and b.scheme in FILE_SCHEMES:
        return os.path.realpath(a.path) == os.path.realpath(b.path)
    return a.text == b.text
