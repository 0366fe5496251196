"""``memory://`` and ``memory://NAME``: an in-process store, for tests and examples.

``memory://`` gives a private table; ``memory://NAME`` a table shared by every store of
that name in the process, so several services can play separate app servers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

from pooled_sessions.adapters.record_table import RecordTable
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Operation, Record, WriteResult
from pooled_sessions.config import Settings

_shared: dict[str, tuple[RecordTable, threading.Lock]] = {}
_shared_lock = threading.Lock()


class MemoryStore:
    """Sessions in a `RecordTable` in this process; nothing survives the process."""

    def __init__(self, url: StoreURL, settings: Settings) -> None:
        self.url = url.text
        self._ttl = settings.tombstone_ttl_seconds
        name = url.host or url.path.strip("/")
        if name:
            with _shared_lock:
                self._table, self._lock = _shared.setdefault(
                    name, (RecordTable(), threading.Lock())
                )
        else:
            self._table, self._lock = RecordTable(), threading.Lock()
        self._seen = self._table.version

    def load(self, session_id: str) -> Record | None:
        with self._lock:
            return self._table.load(session_id)

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        with self._lock:
            return self._table.load_many(session_ids)

    def load_user(self, username: str) -> Mapping[str, Record]:
        with self._lock:
            return self._table.load_user(username)

    def ended(self, session_id: str) -> bool:
        """True if ``session_id`` was ended (its tombstone is kept)."""
        with self._lock:
            return session_id in self._table.tombstones

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        with self._lock:
            foreign = self._table.version != self._seen
            result = self._table.apply(operations, now)
            self._seen = self._table.version
        return WriteResult(result.refused, reloaded=foreign, taken=result.taken)

    def purge_expired(self, now: float) -> int:
        with self._lock:
            return self._table.purge(now, self._ttl)[0]

    def poll(self) -> bool:
        with self._lock:
            changed, self._seen = self._table.version != self._seen, self._table.version
        return changed

    def scan(self) -> Iterator[tuple[str, Record]]:
        with self._lock:
            return self._table.scan()

    def count(self) -> int:
        return len(self._table)

    def close(self) -> None:
        """Nothing to release."""


class AsyncMemoryStore:
    """``memory://`` for `AsyncSessionService`: a `MemoryStore` behind coroutines.

    Nothing here blocks (no I/O; the table lock is held for microseconds), so the calls
    run on the loop. ``memory://NAME`` shares its table with blocking stores of that name.
    A write first gives the loop one turn, as a real store's round trip would, so
    concurrency and cancellation behave as they do on the other stores.
    """

    def __init__(self, url: StoreURL, settings: Settings) -> None:
        self._store = MemoryStore(url, settings)
        self.url = self._store.url

    async def load(self, session_id: str) -> Record | None:
        return self._store.load(session_id)

    async def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        return self._store.load_many(session_ids)

    async def load_user(self, username: str) -> Mapping[str, Record]:
        return self._store.load_user(username)

    async def ended(self, session_id: str) -> bool:
        return self._store.ended(session_id)

    async def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        await asyncio.sleep(0)
        return self._store.write(operations, now)

    async def purge_expired(self, now: float) -> int:
        return self._store.purge_expired(now)

    async def poll(self) -> bool:
        return self._store.poll()

    async def scan(self) -> AsyncIterator[tuple[str, Record]]:
        for pair in self._store.scan():
            yield pair

    async def count(self) -> int:
        return self._store.count()

    async def close(self) -> None:
        self._store.close()
