"""Store registry: a URL scheme names a store class, imported only when a URL needs it.

Third-party stores register under the entry-point groups ``pooled_sessions.stores``
(blocking) and ``pooled_sessions.async_stores`` (asyncio), as ``scheme = module:Class``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from .base import AsyncStore, Store
from .url import StoreURL

_REDIS = "pooled_sessions.adapters.redis_hash"
SYNC_STORES: dict[str, str] = {
    "file": "pooled_sessions.adapters.json_file:JsonFileStore",
    "memory": "pooled_sessions.adapters.memory:MemoryStore",
    "redis": f"{_REDIS}:RedisStore",
    "rediss": f"{_REDIS}:RedisStore",
    "unix": f"{_REDIS}:RedisStore",
    "redis+cluster": f"{_REDIS}:RedisStore",
}
ASYNC_STORES: dict[str, str] = {
    "aiofile": "pooled_sessions.adapters.aiofile:AioFileStore",
    "file": "pooled_sessions.adapters.aiofile:AioFileStore",
    "memory": "pooled_sessions.adapters.memory:AsyncMemoryStore",
    "redis": f"{_REDIS}:AsyncRedisStore",
    "rediss": f"{_REDIS}:AsyncRedisStore",
    "unix": f"{_REDIS}:AsyncRedisStore",
    "redis+cluster": f"{_REDIS}:AsyncRedisStore",
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
            raise ConfigError(
                f"{url.scheme}:// is {kind} store; use it with {service}"
            )
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
    store: AsyncStore = _lookup(
        parsed, ASYNC_STORES, "pooled_sessions.async_stores", SYNC_STORES
    )(parsed, settings)
    return store


__all__ = ["AsyncStore", "Store", "StoreURL", "open_async_store", "open_store"]
