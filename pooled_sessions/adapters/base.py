"""The store contract: what a store must do for the services, sync and asyncio."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..codec import Operation, Record, WriteResult


@runtime_checkable
class Store(Protocol):
    """A blocking session store.

    ``write`` applies a whole batch or raises (then nothing may be assumed written, and the
    same batch is sent again: applying it twice must be harmless). ``poll`` reports whether
    another process changed the data since this store last looked.
    """

    url: str

    def load(self, session_id: str) -> Record | None: ...

    def load_user(self, username: str) -> Mapping[str, Record]: ...

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult: ...

    def purge_expired(self, now: float) -> int: ...

    def poll(self) -> bool: ...

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

    async def poll(self) -> bool: ...

    def scan(self) -> AsyncIteratorOfRecords: ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


class AsyncIteratorOfRecords(Protocol):
    """An async iterator of ``(session_id, record)`` pairs."""

    def __aiter__(self) -> AsyncIteratorOfRecords: ...

    async def __anext__(self) -> tuple[str, Record]: ...


__all__ = ["AsyncStore", "Store", "AsyncIteratorOfRecords", "Iterator"]
