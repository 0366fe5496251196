"""Redis hashes on one server or a Redis Cluster; `redis` itself is imported on first open."""

from __future__ import annotations

from pooled_sessions.adapters.redis.store import AsyncRedisStore, RedisStore

__all__ = ["AsyncRedisStore", "RedisStore"]
