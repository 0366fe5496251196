"""A Redis that may evict session keys is named in a warning at the store's first use.

Eviction would drop live sessions before they expire and tombstones before their time
(an ended id would be accepted again), so the store reads ``maxmemory-policy`` once, on
every master of a cluster, and says what to set. Real redis-servers started with the
policy under test."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pooled_sessions import SessionService, Settings
from pooled_sessions.adapters.redis import AsyncRedisStore, RedisStore
from tests.redis_servers import RedisCluster, RedisServer, unique_prefix

pytestmark = pytest.mark.redis
LOGGER = "session_service"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, started with the extra arguments in ``request.param``."""
    started = RedisServer(tmp_path / "server", *request.param).start()
    yield started
    started.stop()


def url(server: RedisServer) -> str:
    return f"{server.url}?prefix={unique_prefix()}"


EVICTING = [
    pytest.param(("--maxmemory", "50mb", "--maxmemory-policy", policy), id=policy)
    for policy in ("allkeys-lru", "volatile-ttl")
]


@pytest.mark.parametrize("server", EVICTING, indirect=True)
def test_a_policy_that_may_evict_sessions_is_warned_about_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    policy = server.extra[-1]
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store = RedisStore(url(server), Settings())
    try:
        assert store.eviction_policy is None and warnings(caplog) == []  # nothing read yet
        assert store.load("S" * 43) is None
        (message,) = warnings(caplog)
        assert f"maxmemory-policy {policy}" in message and "noeviction" in message
        assert f"127.0.0.1:{server.port}" in message and "ended session" in message
        assert store.eviction_policy == policy
        store.count()
        assert len(warnings(caplog)) == 1, "warned more than once per store"
    finally:
        store.close()


@pytest.mark.parametrize("server", EVICTING[:1], indirect=True)
def test_the_asyncio_store_warns_and_stats_show_the_policy(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def first_use() -> str | None:
        store = AsyncRedisStore(url(server), Settings())
        try:
            await store.count()
            return store.eviction_policy
        finally:
            await store.close()

    assert asyncio.run(first_use()) == "allkeys-lru"
    assert len(warnings(caplog)) == 1
    with SessionService(url(server), check_store=False) as service:
        assert service.stats()["store_eviction_policy"] is None  # not used yet
        service.create_session("alice")
        service.force_save()
        assert service.stats()["store_eviction_policy"] == "allkeys-lru"
    with SessionService(url(server)) as service:  # the start check reached Redis
        assert service.stats()["store_eviction_policy"] == "allkeys-lru"


def test_noeviction_is_not_warned_about(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = RedisStore(url(redis_server), Settings())
    try:
        store.count()
        assert store.eviction_policy == "noeviction" and warnings(caplog) == []
    finally:
        store.close()


@pytest.mark.parametrize("server", [("--rename-command", "CONFIG", "")], indirect=True)
def test_a_server_refusing_config_is_used_all_the_same(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store = RedisStore(url(server), Settings())
    try:
        store.count()
        assert store.eviction_policy is None and warnings(caplog) == []
        assert any("maxmemory-policy not read" in r.getMessage() for r in caplog.records)
        store.write([], 0.0)
        store.count()
        assert sum("not read" in r.getMessage() for r in caplog.records) == 1, "asked again"
    finally:
        store.close()


@pytest.mark.cluster
def test_every_master_of_a_cluster_is_checked(
    redis_cluster: RedisCluster, cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = RedisStore(cluster_url, Settings())
    try:
        store.count()
        assert store.eviction_policy == "noeviction" and warnings(caplog) == []
    finally:
        store.close()
    evicting = redis_cluster.nodes[2]
    evicting.cli("config", "set", "maxmemory-policy", "allkeys-lfu")
    try:
        store = RedisStore(f"{cluster_url}x", Settings())
        store.count()
        store.close()
    finally:
        evicting.cli("config", "set", "maxmemory-policy", "noeviction")
    (message,) = warnings(caplog)
    assert "maxmemory-policy allkeys-lfu" in message
    assert f"127.0.0.1:{evicting.port}=allkeys-lfu" in str(store.eviction_policy)
    assert str(store.eviction_policy).count("=noeviction") == 2
