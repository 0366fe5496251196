"""Redis hashes on one server or a Redis Cluster; `redis` itself is imported on first open."""

from __future__ import annotations

from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.adapters.redis.store_async import AsyncRedisStore

__all__ = ["AsyncRedisStore", "RedisStore"]
