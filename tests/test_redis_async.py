"""The asyncio Redis store: the same plans as the blocking one, over redis.asyncio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pooled_sessions import Settings
from pooled_sessions.adapters import open_async_store
from pooled_sessions.adapters.protocol import AsyncStore, AsyncWatchableStore, WatchableStore
from pooled_sessions.adapters.redis import plan
from pooled_sessions.adapters.redis.base import SCRIPT_CALLS, RedisBase
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.adapters.redis.store_async import AsyncRedisStore
from pooled_sessions.codec import Delete
from pooled_sessions.errors import StoreUnavailableError
from tests.redis_servers import RedisCluster, RedisServer, commands_called, free_port
from tests.test_redis_store import OTHER, SID, upsert


@pytest.fixture
def url(any_redis_url: str) -> str:
    """A store URL with a fresh prefix, on one server or on the cluster."""
    return any_redis_url


@pytest.fixture
async def store(url: str) -> AsyncIterator[AsyncRedisStore]:
    opened = open_async_store(url, Settings())
    assert isinstance(opened, AsyncRedisStore)
    yield opened
    await opened.close()


def test_both_stores_follow_their_protocols(redis_url: str) -> None:
    sync_store = RedisStore(redis_url)
    assert isinstance(sync_store, WatchableStore)
    sync_store.close()
    assert isinstance(AsyncRedisStore(redis_url), AsyncWatchableStore)
    sync_methods = {n for n in dir(RedisStore) if not n.startswith("_")}
    async_methods = {n for n in dir(AsyncRedisStore) if not n.startswith("_")}
    assert sync_methods == async_methods


async def test_write_load_and_indexes(store: AsyncRedisStore) -> None:
    assert isinstance(store, AsyncStore)
    now = time.time()
    brief = now + 1.0  # long enough for the checks below on a loaded machine
    result = await store.write(
        [upsert(attrs={"a": 1}, created=True), upsert(OTHER, created=True, expires=brief)],
        now,
    )
    assert not result.refused
    record = await store.load(SID)
    assert record is not None and record["attributes"] == {"a": 1}
    assert set(await store.load_user("alice")) == {SID, OTHER}
    assert sorted([sid async for sid, _ in store.scan()]) == sorted([SID, OTHER])
    await asyncio.sleep(max(0.0, brief - time.time()) + 0.1)
    assert await store.count() == 1
    assert await store.purge_expired(time.time()) == 1
    await store.write([Delete(SID, "alice", time.time())], time.time())
    late = await store.write([upsert(attrs={"a": 2})], time.time())
    assert late.refused == {SID} and await store.load(SID) is None
    assert await store.poll() is False


async def test_watch_hears_another_servers_end(store: AsyncRedisStore, url: str) -> None:
    heard: list[tuple[Any, bool]] = []
    await store.watch(lambda ids, ended: heard.append((ids, ended)))
    other = RedisStore(url, Settings())
    try:
        other.write([upsert(created=True)], time.time())
        started = time.monotonic()
        other.write([Delete(SID, "alice", time.time())], time.time())
        while not heard and time.monotonic() - started < 2:
            await asyncio.sleep(0.001)
        assert heard == [([SID], True)]
        assert time.monotonic() - started < 0.1
    finally:
        other.close()


async def test_an_unreachable_server_is_a_clear_error() -> None:
    port = free_port()
    opened = AsyncRedisStore(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2&retries=0")
    try:
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            await opened.load(SID)
    finally:
        await opened.close()


@pytest.mark.redis
async def test_a_ready_async_client_is_accepted(redis_server: RedisServer) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis(port=redis_server.port)
    opened = AsyncRedisStore(settings=Settings(key_prefix="ready"), client=client)
    await opened.write([upsert(created=True)], time.time())
    assert await opened.load(SID) is not None
    await opened.close()
    assert await client.ping()
    await client.aclose()


def spy_on_routes(store: RedisBase, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each script call ``store`` sends from now on names its node."""
    routed: list[bool] = []
    route = store._route

    def spy(command: plan.Command) -> dict[str, Any]:
        found = route(command)
        if command[0] in SCRIPT_CALLS:
            routed.append("target_nodes" in found)
        return found

    monkeypatch.setattr(store, "_route", spy)
    return routed


def getkeys_calls(cluster: RedisCluster) -> int:
    return sum(commands_called(node).get("command|getkeys", 0) for node in cluster.nodes)


@pytest.mark.cluster
async def test_both_stores_send_script_calls_to_their_node(
    redis_cluster: RedisCluster, cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster, either store names the node of each script call from its first key,
    so no client asks the server for the call's keys (COMMAND GETKEYS) once per call."""
    aio_store, sync_store = AsyncRedisStore(cluster_url), RedisStore(cluster_url)
    try:
        await aio_store.load(SID)  # an asyncio cluster client reads the slot map on first use
        before = getkeys_calls(redis_cluster)
        routed = {"aio": spy_on_routes(aio_store, monkeypatch)}
        routed["sync"] = spy_on_routes(sync_store, monkeypatch)
        ids = [f"{n}{SID[1:]}" for n in range(6)]
        for sid in ids[:3]:
            await aio_store.write([upsert(sid, created=True)], time.time())
        for sid in ids[3:]:
            sync_store.write([upsert(sid, created=True)], time.time())
        assert set(await aio_store.load_user("alice")) == set(sync_store.load_user("alice"))
        assert len(sync_store.load_user("alice")) == 6
        assert all(routed["aio"]) and all(routed["sync"]) and len(routed["aio"]) >= 3
        assert len(routed["sync"]) >= 3 and getkeys_calls(redis_cluster) == before
    finally:
        await aio_store.close()
        sync_store.close()
