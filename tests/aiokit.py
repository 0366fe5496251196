"""Helpers of the AsyncSessionService tests: a store whose writes can be held, failed and
counted, and polling for a condition without blocking the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence

from pooled_sessions import Settings
from pooled_sessions.adapters.memory import AsyncMemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Changes, Operation, Record, WriteResult


class GatedStore:
    """An `AsyncMemoryStore` whose writes can be held at a gate, made to fail, and counted."""

    def __init__(self) -> None:
        self.inner = AsyncMemoryStore(StoreURL.parse("memory://"), Settings())
        self.url = "memory://gated"
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail: Exception | None = None
        self.writes = self.active = self.most_active = 0
        self.watcher: Callable[[Collection[str] | None, bool], None] | None = None

    async def load(self, session_id: str) -> Record | None:
        return await self.inner.load(session_id)

    async def load_user(self, username: str) -> Mapping[str, Record]:
        return await self.inner.load_user(username)

    async def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.started.set()
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            result = await self.inner.write(operations, now)
            self.writes += 1
            return result
        finally:
            self.active -= 1

    async def purge_expired(self, now: float) -> int:
        return await self.inner.purge_expired(now)

    async def poll(self) -> Changes:
        return await self.inner.poll()

    async def scan(self) -> AsyncIterator[tuple[str, Record]]:
        async for pair in self.inner.scan():
            yield pair

    async def count(self) -> int:
        return await self.inner.count()

    async def close(self) -> None:
        await self.inner.close()


class WatchedStore(GatedStore):
    """A store that pushes other servers' changes (the optional ``watch`` hook)."""

    async def watch(self, callback: Callable[[Collection[str] | None, bool], None]) -> None:
        self.watcher = callback


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def holds(value: bool) -> bool:
    """A condition for `eventually`, read when it is polled."""
    return value
