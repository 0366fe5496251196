"""Store registry: a URL scheme names a store class, imported only when a URL needs it.

Third-party stores register under the entry-point groups ``pooled_sessions.stores``
(blocking) and ``pooled_sessions.async_stores`` (asyncio), as ``scheme = module:Class``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from pooled_sessions.adapters.protocol import AsyncStore, Store
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.config import Settings
from pooled_sessions.errors import ConfigError

_REDIS = "pooled_sessions.adapters.redis.store:RedisStore"
_AIO_REDIS = "pooled_sessions.adapters.redis.store_async:AsyncRedisStore"
SYNC_STORES: dict[str, str] = {
    "file": "pooled_sessions.adapters.file.store:JsonFileStore",
    "memory": "pooled_sessions.adapters.memory:MemoryStore",
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis+cluster": _REDIS,
}
ASYNC_STORES: dict[str, str] = {
    "aiofile": "pooled_sessions.adapters.file.store_async:AioFileStore",
    "file": "pooled_sessions.adapters.file.store_async:AioFileStore",
    "memory": "pooled_sessions.adapters.memory:AsyncMemoryStore",
    "redis": _AIO_REDIS,
    "rediss": _AIO_REDIS,
    "unix": _AIO_REDIS,
    "redis+cluster": _AIO_REDIS,
}


def _lookup(url: StoreURL, table: dict[str, str], group: str, other: dict[str, str]) -> Any:
    target = table.get(url.scheme)
    if target is None:
        found = [ep for ep in entry_points(group=group) if ep.name == url.scheme]
        if found:
            return found[0].load()
        if url.scheme in other:
            kind = "an asyncio" if table is SYNC_STORES else "a blocking"
            service = "AsyncSessionService" if table is SYNC_STORES else "SessionService"
            raise ConfigError(f"{url.scheme}:// is {kind} store; use it with {service}")
        known = ", ".join(sorted(f"{s}://" for s in table))
        raise ConfigError(f"unknown store scheme {url.scheme!r} in {url}; known: {known}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def open_store(url: str | StoreURL, settings: Settings) -> Store:
    """Open the blocking store a URL names."""
    parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
    store: Store = _lookup(parsed, SYNC_STORES, "pooled_sessions.stores", ASYNC_STORES)(
        parsed, settings
    )
    return store


def open_async_store(url: str | StoreURL, settings: Settings) -> AsyncStore:
    """Open the asyncio store a URL names."""
    parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
    store: AsyncStore = _lookup(parsed, ASYNC_STORES, "pooled_sessions.async_stores", SYNC_STORES)(
        parsed, settings
    )
    return store


def check_kind(store: object, *, asynchronous: bool) -> None:
    """Refuse a store object of the other kind: a blocking one for asyncio, or the reverse.

    Not bridged: a blocking store on the loop would stall it, and an asyncio store driven
    from threads would need a loop of its own. Each store has a twin of the right kind.
    """
    write = getattr(store, "write", None)
    if not callable(write):
        raise ConfigError(f"{type(store).__name__} is not a session store (it has no write())")
    if inspect.iscoroutinefunction(write) == asynchronous:
        return
    name = type(store).__name__
    if asynchronous:
        raise ConfigError(
            f"{name} is a blocking store: AsyncSessionService needs an asyncio store "
            "(give it a URL, or AioFileStore, AsyncMemoryStore, AsyncRedisStore); "
            f"use {name} with SessionService"
        )
    raise ConfigError(
        f"{name} is an asyncio store: SessionService needs a blocking store "
        f"(give it a URL, or JsonFileStore, MemoryStore, RedisStore); "
        f"use {name} with AsyncSessionService"
    )


def check_ready(store: object, *, close: bool) -> None:
    """Run a blocking store's start-up check (`CheckedStore`), if it has one; on failure
    close the store first when ``close`` (the caller opened it and keeps nothing)."""
    check = getattr(store, "check", None)
    if check is None:
        return
    try:
        check()
    except BaseException:
        if close:
            with contextlib.suppress(Exception):  # the check's error is the one to report
                store.close()  # type: ignore[attr-defined]
        raise


async def check_ready_async(store: object) -> None:
    """Run an asyncio store's start-up check (`AsyncCheckedStore`), if it has one."""
    check = getattr(store, "check", None)
    if check is not None:
        await check()


__all__ = [
    "AsyncStore",
    "Store",
    "StoreURL",
    "check_kind",
    "check_ready",
    "check_ready_async",
    "open_async_store",
    "open_store",
]
