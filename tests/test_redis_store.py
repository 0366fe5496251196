"""The Redis store on its own, against a real redis-server and a real 3-master cluster.

Key schema and hash layout, per-field deltas, expiry that only grows, tombstones,
idempotent batches, index upkeep without keyspace notifications, options and errors.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from pooled_sessions import Settings
from pooled_sessions.adapters import open_store
from pooled_sessions.adapters.redis.keys import KeySchema
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.codec import Delete, Upsert, encode_attributes
from pooled_sessions.errors import (
    ConfigError,
    CorruptStoreError,
    MissingDependencyError,
    StoreUnavailableError,
)
from tests.redis_servers import RedisServer, unique_prefix

SID = "S" * 43
OTHER = "O" * 43


def upsert(
    sid: str = SID,
    user: str = "alice",
    attrs: dict[str, Any] | None = None,
    changed: set[str] | None = None,
    removed: frozenset[str] = frozenset(),
    created: bool = False,
    expires: float | None = None,
    accessed: float | None = None,
) -> Upsert:
    now = time.time()
    encoded = encode_attributes(attrs or {})
    return Upsert(
        session_id=sid,
        username=user,
        attributes=encoded,
        changed=frozenset(encoded if changed is None else changed),
        removed=removed,
        ip="203.0.113.7",
        user_agent="UA/1",
        created_at=now,
        last_accessed_at=accessed or now,
        expires_at=expires or now + 600,
        absolute_expires_at=None,
        created=created,
    )


@pytest.fixture
def url(any_redis_url: str) -> str:
    """A store URL with a fresh prefix, on one server or on the cluster."""
    return any_redis_url


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    opened = RedisStore(url, Settings())
    yield opened
    opened.close()


def raw(store: RedisStore) -> Any:
    return store._client


def test_registry_opens_the_redis_store(redis_server: RedisServer, cluster_url: str) -> None:
    for url in (redis_server.url, cluster_url):
        opened = open_store(url, Settings())
        assert isinstance(opened, RedisStore) and opened.count() >= 0
        assert opened.options.cluster == url.startswith("redis+cluster")
        opened.close()


def test_a_cluster_url_on_a_plain_server_is_a_clear_error(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis+cluster://")
    with pytest.raises(StoreUnavailableError, match=f"redis.*{redis_server.port}.*[Cc]luster"):
        RedisStore(url, Settings())


def test_session_is_a_hash_with_one_field_per_attribute_and_a_ttl(store: RedisStore) -> None:
    store.write([upsert(attrs={"cart": [1, 2], "role": "admin"}, created=True)], time.time())
    key = store.keys.session(SID)
    fields = {k.decode(): v.decode() for k, v in raw(store).hgetall(key).items()}
    assert fields[".cart"] == "[1,2]" and fields[".role"] == '"admin"'
    assert fields["@user"] == "alice" and fields["@v"] == "1"
    assert 590_000 < raw(store).pttl(key) <= 600_000
    record = store.load(SID)
    assert record is not None and record["attributes"] == {"cart": [1, 2], "role": "admin"}
    assert record["ip"] == "203.0.113.7" and record["user_agent"] == "UA/1"


def test_keys_one_script_needs_share_a_hash_slot(store: RedisStore) -> None:
    from redis.crc import key_slot

    keys = store.keys
    assert key_slot(keys.session(SID).encode()) == key_slot(keys.tombstone(SID).encode())
    user = keys.user("we{ird}:name%")
    assert user.count("{") == 1 and user.count("}") == 1
    with pytest.raises(ConfigError, match="prefix"):
        KeySchema("bad{prefix}")


def test_a_flush_writes_only_changed_fields(store: RedisStore) -> None:
    store.write([upsert(attrs={"a": 1, "b": 1}, created=True)], time.time())
    other = RedisStore(store.url, Settings())
    try:
        # two servers, each with a stale copy, change different attributes
        other.write([upsert(attrs={"a": 2, "b": 1}, changed={"a"})], time.time())
        store.write([upsert(attrs={"a": 1, "b": 3}, changed={"b"})], time.time())
    finally:
        other.close()
    record = store.load(SID)
    assert record is not None and record["attributes"] == {"a": 2, "b": 3}


def test_removed_attributes_are_deleted(store: RedisStore) -> None:
    store.write([upsert(attrs={"a": 1, "b": 1}, created=True)], time.time())
    store.write([upsert(attrs={"a": 1}, changed=set(), removed=frozenset({"b"}))], time.time())
    record = store.load(SID)
    assert record is not None and record["attributes"] == {"a": 1}


def test_a_late_write_never_shortens_expiry(store: RedisStore) -> None:
    now = time.time()
    store.write([upsert(created=True, expires=now + 900, accessed=now)], now)
    store.write([upsert(changed=set(), expires=now + 300, accessed=now - 5)], now)
    record = store.load(SID)
    assert record is not None and record["expires_at"] == pytest.approx(now + 900)
    assert record["last_accessed_at"] == pytest.approx(now)
    assert raw(store).pttl(store.keys.session(SID)) > 800_000


def test_a_write_after_an_end_is_refused_and_leaves_no_index_entry(store: RedisStore) -> None:
    store.write([upsert(created=True)], time.time())
    store.write([Delete(SID, "alice", time.time())], time.time())
    assert raw(store).exists(store.keys.tombstone(SID)) == 1
    late = store.write([upsert(attrs={"x": 1}), upsert(OTHER, created=True)], time.time())
    assert late.refused == {SID}
    assert store.load(SID) is None and store.load(OTHER) is not None
    assert store.load_user("alice").keys() == {OTHER}
    assert raw(store).zscore(store.keys.user("alice"), SID) is None
    assert store.count() == 1


def test_a_retried_batch_applies_once(store: RedisStore) -> None:
    batch = [upsert(attrs={"n": 1}, created=True), upsert(OTHER, user="bob", created=True)]
    for _ in range(2):
        assert not store.write(batch, time.time()).refused
    assert store.count() == 2
    assert raw(store).zcard(store.keys.user("alice")) == 1
    ended = [Delete(SID, "alice", time.time())]
    for _ in range(2):
        store.write(ended, time.time())
    assert store.count() == 1 and store.load(SID) is None


def expiry_members(store: RedisStore) -> set[str]:
    """Every ``id:user`` member of the expiry index."""
    return {m.decode() for key in store.keys.all_shards() for m in raw(store).zrange(key, 0, -1)}


def test_a_partial_write_to_a_session_redis_lost_is_refused_and_unindexed(
    store: RedisStore,
) -> None:
    store.write([upsert(attrs={"a": 1, "b": 2}, created=True)], time.time())
    raw(store).delete(store.keys.session(SID))  # evicted, or lost in a restart
    result = store.write([upsert(attrs={"a": 5, "b": 2}, changed={"a"})], time.time())
    assert result.refused == {SID} and not result.taken
    assert store.load(SID) is None and not raw(store).exists(store.keys.session(SID))
    assert raw(store).zscore(store.keys.user("alice"), SID) is None
    assert expiry_members(store) == set() and store.count() == 0


def test_a_taken_create_leaves_the_holders_indexes_alone(store: RedisStore) -> None:
    holders = [upsert(attrs={"mine": 1}, created=True), upsert(OTHER, created=True)]
    store.write(holders, time.time())
    holder = store.load(SID)
    later = time.time() + 1.0
    bob = dataclasses.replace(upsert(user="bob", created=True), create=True, created_at=later)
    alice = dataclasses.replace(upsert(OTHER, created=True), create=True, created_at=later)
    result = store.write([bob, alice], time.time())
    assert result.taken == {SID, OTHER} and not result.refused
    assert store.load(SID) == holder and store.load_user("bob") == {}
    assert raw(store).zscore(store.keys.user("bob"), SID) is None
    assert set(store.load_user("alice")) == {SID, OTHER}
    assert expiry_members(store) == {f"{SID}:alice", f"{OTHER}:alice"}


def test_purge_and_load_user_keep_the_indexes_free_of_dead_ids(store: RedisStore) -> None:
    now = time.time()
    third = "T" * 43
    store.write(
        [
            upsert(created=True, expires=now + 0.3),
            upsert(OTHER, created=True, expires=now + 600),
            upsert(third, user="carol", created=True, expires=now + 0.3),
        ],
        now,
    )
    assert store.count() == 3
    time.sleep(0.4)  # Redis expires two hashes; nothing tells the indexes
    assert store.count() == 1
    assert store.load_user("alice").keys() == {OTHER}
    assert raw(store).zcard(store.keys.user("alice")) == 1  # pruned by the read
    assert store.purge_expired(time.time()) == 1  # carol's, which nobody read
    assert raw(store).zcard(store.keys.user("carol")) == 0
    shard_members = [m for key in store.keys.all_shards() for m in raw(store).zrange(key, 0, -1)]
    assert [m.decode().split(":")[0] for m in shard_members] == [OTHER]
    assert store.purge_expired(time.time()) == 0


def test_purge_rescores_live_sessions_it_finds_early(store: RedisStore) -> None:
    now = time.time()
    store.write([upsert(created=True, expires=now + 600)], now)
    shard = store.keys.shard_of(SID)
    raw(store).zadd(shard, {f"{SID}:alice": now - 10})  # a stale, too low score
    assert store.purge_expired(now) == 0
    assert raw(store).zscore(shard, f"{SID}:alice") == pytest.approx(now + 600, abs=0.01)
    assert store.load(SID) is not None


def test_scan_and_count_see_every_session(store: RedisStore) -> None:
    ids = [f"{n:043d}" for n in range(30)]
    store.write(
        [upsert(sid, user=f"u{n % 4}", created=True) for n, sid in enumerate(ids)], time.time()
    )
    assert store.count() == 30
    assert sorted(sid for sid, _ in store.scan()) == ids
    assert len(store.load_user("u1")) == 8


def test_large_batches_go_in_chunks(url: str) -> None:
    chunked = RedisStore(f"{url}&chunk_size=7", Settings())
    try:
        ops = [upsert(f"{n:043d}", created=True, attrs={"n": n}) for n in range(40)]
        assert not chunked.write(ops, time.time()).refused
        assert chunked.count() == 40
        record = chunked.load(f"{39:043d}")
        assert record is not None and record["attributes"] == {"n": 39}
    finally:
        chunked.close()


def test_scripts_are_sent_again_after_the_server_forgets_them(store: RedisStore) -> None:
    store.write([upsert(created=True)], time.time())
    raw(store).script_flush()  # on a cluster, redis-py sends it to every node
    assert not store.write([upsert(attrs={"z": 1})], time.time()).refused
    record = store.load(SID)
    assert record is not None and record["attributes"] == {"z": 1}


def test_a_corrupt_hash_is_reported_not_guessed(store: RedisStore) -> None:
    raw(store).hset(store.keys.session(SID), mapping={"@v": "9", "@user": "x"})
    with pytest.raises(CorruptStoreError, match="layout version"):
        store.load(SID)
    raw(store).hset(store.keys.session(SID), mapping={"@v": "1", ".a": "{not json"})
    with pytest.raises(CorruptStoreError, match="not a session hash"):
        store.load(SID)


def test_events_tell_watchers_what_others_ended_or_changed(store: RedisStore) -> None:
    heard: list[tuple[Any, bool]] = []
    store.watch(lambda ids, ended: heard.append((ids, ended)))
    other = RedisStore(store.url, Settings())
    try:
        other.write([upsert(created=True)], time.time())
        other.write([upsert(attrs={"a": 1})], time.time())  # attribute change: "changed"
        other.write([upsert(changed=set())], time.time())  # a touch: no event
        other.write([Delete(SID, "alice", time.time())], time.time())
        store.write([upsert(OTHER, created=True)], time.time())
        store.write([Delete(OTHER, "alice", time.time())], time.time())  # own: not heard
        deadline = time.monotonic() + 2
        while len(heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        other.close()
    assert heard == [([SID], False), ([SID], True)]


def test_url_options_are_typed_and_checked(redis_server: RedisServer) -> None:
    good = RedisStore(
        f"{redis_server.url}?socket_timeout=1.5&max_connections=7"
        f"&index_shards=4&prefix={unique_prefix()}",
        Settings(),
    )
    try:
        assert good.options.client_kwargs["socket_timeout"] == 1.5
        assert good.options.client_kwargs["max_connections"] == 7
        assert good.keys.shards == 4 and good.count() == 0
        pool = good._client.connection_pool
        assert pool.max_connections == 7
    finally:
        good.close()
    for query, message in (
        ("socket_timeout=soon", "socket_timeout"),
        ("index_shards=0", "index_shards"),
        ("retries=-1", "retries"),
    ):
        with pytest.raises(ConfigError, match=message):
            RedisStore(f"{redis_server.url}?{query}", Settings())


def test_settings_key_prefix_is_used_unless_the_url_names_one(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    opened = RedisStore(redis_server.url, Settings(key_prefix=prefix))
    try:
        assert opened.keys.session(SID).startswith(f"{prefix}:s:")
    finally:
        opened.close()


def test_a_ready_client_is_accepted(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    opened = RedisStore(settings=Settings(key_prefix=unique_prefix()), client=client)
    try:
        assert str(redis_server.port) in opened.url
        opened.write([upsert(attrs={"a": [1]}, created=True)], time.time())
        record = opened.load(SID)
        assert record is not None and record["attributes"] == {"a": [1]}
        assert opened.load_user("alice").keys() == {SID}
    finally:
        opened.close()
    assert client.ping()  # a client it was given is not closed
    client.close()


def test_unix_socket_url(tmp_path: Any) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "unix", "--unixsocket", str(socket_path)).start()
    try:
        opened = RedisStore(f"unix://{socket_path}?db=0&prefix=p", Settings())
        opened.write([upsert(created=True)], time.time())
        assert opened.load(SID) is not None
        opened.close()
    finally:
        server.stop()


def test_a_missing_redis_package_names_the_extra(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_redis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "redis" or name.startswith("redis."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_redis)
    with pytest.raises(MissingDependencyError, match=r'pip install "pooled-sessions\[redis\]"'):
        RedisStore(redis_server.url, Settings())


def test_a_redis_package_too_old_names_the_version_needed(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis, "__version__", "5.0.8")
    with pytest.raises(MissingDependencyError, match=r"redis-py 5\.3 or later, found 5\.0\.8"):
        RedisStore(redis_server.url, Settings())


def test_event_messages_are_json_with_ids(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    opened = RedisStore(f"{redis_server.url}?prefix={prefix}", Settings())
    listener: Any = redis.Redis(port=redis_server.port).pubsub()  # type: ignore[no-untyped-call]
    listener.subscribe(f"{prefix}:events")
    try:
        assert listener.get_message(timeout=1)["type"] == "subscribe"
        opened.write([upsert(created=True)], time.time())
        opened.write([Delete(SID, "alice", time.time())], time.time())
        message = listener.get_message(timeout=1)
        assert message is not None
        event = json.loads(message["data"])
        assert event["e"] == [SID] and event["o"]
    finally:
        listener.close()
        opened.close()


@pytest.mark.cluster
def test_a_closed_cluster_store_leaves_no_connection_open(cluster_url: str) -> None:
    """redis-py's blocking cluster client keeps its nodes' pools open on close."""
    store = RedisStore(cluster_url, Settings())
    store.load(SID)  # and, after the first call, CONFIG GET on every master
    nodes = store._client.get_nodes()
    pools = [node.redis_connection.connection_pool for node in nodes]
    assert any(conn._sock is not None for pool in pools for conn in pool._available_connections)
    store.close()
    assert all(conn._sock is None for pool in pools for conn in pool._available_connections)
