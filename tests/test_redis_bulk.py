"""The bulk path of the Redis store: many new sessions written by one script call.

A batch with `BULK_MIN` or more full creates (a migration, a burst of logins) goes through
`BULK_CREATE`. It must leave exactly what the ordinary path (APPLY) leaves: the same hash
fields, TTLs and index entries; tombstoned ids refused and reported; idempotent; slot
scores kept and no slot added; cluster-safe. Each test compares against real redis-server and
cluster state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pooled_sessions import PoolLimits, Settings
from pooled_sessions.adapters.redis import bulk as redis_bulk
from pooled_sessions.adapters.redis import plan as plan
from pooled_sessions.adapters.redis.keys import KeySchema
from pooled_sessions.adapters.redis.scripts import APPLY, BULK_CREATE
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.codec import Delete, Upsert, encode_attributes
from tests.redis_servers import unique_prefix
from tests.test_redis_store import upsert

COUNT = redis_bulk.BULK_MIN * 2


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ]
)
def base_url(request: pytest.FixtureRequest) -> str:
    """A server (or cluster) URL without a prefix: each test picks its own."""
    fixture = "redis_server" if request.param == "redis" else "redis_cluster"
    server: Any = request.getfixturevalue(fixture)
    return str(server.url)


def open_store(base_url: str, settings: Settings | None = None, **query: Any) -> RedisStore:
    options = "&".join(f"{k}={v}" for k, v in {"prefix": unique_prefix(), **query}.items())
    return RedisStore(f"{base_url}?{options}", settings or Settings())


@pytest.fixture
def stores(base_url: str) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two stores on separate prefixes of one server: the bulk path, and the APPLY path."""
    pair = (open_store(base_url), open_store(base_url))
    yield pair
    for store in pair:
        store.close()


CREATED = time.time()


@pytest.fixture
def store(stores: tuple[RedisStore, RedisStore]) -> RedisStore:
    return stores[0]


def creates(count: int = COUNT, now: float | None = None) -> list[Upsert]:
    """New sessions, each written in full: created at one moment, last used and expiring
    relative to ``now`` (an older copy of the same sessions has an earlier ``now``)."""
    now = time.time() if now is None else now
    batch = []
    for n in range(count):
        attributes = encode_attributes({"n": n, "tags": ["a", n]})
        batch.append(
            Upsert(
                session_id=f"bulk{n:039d}",
                username=f"user{n % 5}",
                attributes=attributes,
                changed=frozenset(attributes),
                removed=frozenset(),
                ip="203.0.113.7",
                user_agent="UA/1",
                created_at=CREATED,
                last_accessed_at=now - 1.0,
                expires_at=now + 600.0 + n,
                absolute_expires_at=None,
                created=True,
            )
        )
    return batch


def state(store: RedisStore, ids: list[str]) -> dict[str, Any]:
    """Everything Redis holds for these sessions, key names aside."""
    client, keys = store._client, store.keys
    users = {f"user{n}" for n in range(5)}
    return {
        "hashes": {sid: client.hgetall(keys.session(sid)) for sid in ids},
        # absolute (PEXPIREAT), so exact: a relative TTL read a moment later would differ
        "expire_at_ms": {sid: client.pexpiretime(keys.session(sid)) for sid in ids},
        "users": {u: client.zrange(keys.user(u), 0, -1, withscores=True) for u in users},
        "expiry": sorted(
            m for key in keys.all_shards() for m in client.zrange(key, 0, -1, withscores=True)
        ),
        "tombstones": [sid for sid in ids if client.exists(keys.tombstone(sid))],
    }


def test_the_bulk_path_leaves_what_the_ordinary_path_leaves(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    bulk, ordinary = stores
    batch = creates()
    third = batch[3]  # no attributes at all
    batch[3] = upsert(third.session_id, user="user3", created=True, expires=third.expires_at)
    ids = [op.session_id for op in batch]
    now = time.time()
    assert not bulk.write(batch, now).refused
    for start in range(0, len(batch), 8):  # below BULK_MIN: the APPLY path
        assert not ordinary.write(batch[start : start + 8], now).refused
    assert state(bulk, ids) == state(ordinary, ids)
    record = bulk.load(ids[7])
    assert record is not None and record["attributes"] == {"n": 7, "tags": ["a", 7]}
    assert record["expires_at"] == batch[7].expires_at  # to the bit, as repr() wrote it
    assert bulk.count() == COUNT and len(bulk.load_user("user2")) == len(range(2, COUNT, 5))


def test_ended_ids_are_refused_reported_and_left_out_of_the_indexes(store: RedisStore) -> None:
    batch = creates()
    ended = [batch[0], batch[10], batch[-1]]
    store.write(
        [upsert(op.session_id, user=op.username, created=True) for op in ended], time.time()
    )
    store.write([Delete(op.session_id, op.username, time.time()) for op in ended], time.time())
    result = store.write(batch, time.time())
    assert result.refused == {op.session_id for op in ended}
    for op in ended:
        assert store.load(op.session_id) is None
        assert store._client.zscore(store.keys.user(op.username), op.session_id) is None
    members = {
        m.decode().split(":")[0]
        for key in store.keys.all_shards()
        for m in store._client.zrange(key, 0, -1)
    }
    assert members == {op.session_id for op in batch} - result.refused
    assert store.count() == COUNT - 3


def test_a_bulk_write_is_idempotent_and_never_shortens_expiry(store: RedisStore) -> None:
    now = time.time()
    first = creates(now=now)
    ids = [op.session_id for op in first]
    store.write(first, now)
    store.write(first, now)  # a retried pipeline, or a migration run again
    once = state(store, ids)
    assert sum(len(v) for v in once["users"].values()) == COUNT and len(once["expiry"]) == COUNT
    earlier = creates(now=now - 300)  # an older copy: its access and expiry are earlier
    store.write(earlier, now)
    assert state(store, ids) == once
    later = creates(now=now + 60)
    store.write(later, now)
    record = store.load(ids[5])
    assert record is not None and record["expires_at"] == later[5].expires_at
    assert record["last_accessed_at"] == later[5].last_accessed_at


def test_sessions_expired_on_arrival_are_not_written(store: RedisStore) -> None:
    now = time.time()
    batch = creates(now=now)
    batch[:4] = [
        upsert(op.session_id, user=op.username, created=True, expires=now - 1) for op in batch[:4]
    ]
    assert not store.write(batch, now).refused
    assert [store.load(op.session_id) for op in batch[:4]] == [None] * 4
    assert store.count() == COUNT - 4
    assert store._client.zscore(store.keys.user("user0"), batch[0].session_id) is None


def test_mixed_batches_keep_every_write(store: RedisStore) -> None:
    old = "OLD" + "o" * 40
    gone = "GONE" + "g" * 39
    store.write(
        [upsert(old, attrs={"a": 1, "b": 1}, created=True), upsert(gone, created=True)], time.time()
    )
    batch: list[Any] = [
        *creates(),
        upsert(old, attrs={"a": 1, "b": 2}, changed={"b"}),
        Delete(gone, "alice", time.time()),
    ]
    assert redis_bulk.split(batch) is not None
    assert not store.write(batch, time.time()).refused
    record = store.load(old)
    assert record is not None and record["attributes"] == {"a": 1, "b": 2}
    assert store.load(gone) is None and store.count() == COUNT + 1


def test_bulk_writes_keep_slot_scores_and_never_add_a_slot(base_url: str) -> None:
    settings = Settings(pool=PoolLimits(max_total=COUNT + 1))
    store = open_store(base_url, settings)
    batch, limit = creates(), COUNT + 1
    try:
        for op in batch:  # each new session claimed its slot, scored by its first expiry
            assert store.claim_slot(op.session_id, time.time() + 60, limit)
        handed = batch[0].session_id  # ended here; its slot went to the next login
        assert store.claim_slot("Y" * 43, time.time() + 60, limit, replaces=[handed])
        store.write(batch, time.time())  # the creations land after the hand-over
        assert redis_bulk.split(batch) is not None
        assert store.slots_in_use() == COUNT, "the handed-over slot came back"
        client = store._client
        assert client.zscore(store.keys.slots, handed) is None
        for op in batch[1:]:
            assert client.zscore(store.keys.slots, op.session_id) == pytest.approx(op.expires_at)
        assert store.claim_slot("X" * 43, time.time() + 60, limit)
        assert not store.claim_slot("Z" * 43, time.time() + 60, limit)
    finally:
        store.close()


def test_many_attributes_and_small_calls(base_url: str) -> None:
    store = open_store(base_url, chunk_size=5)  # several script calls, several pipelines
    try:
        batch = creates()
        wide = {f"k{n}": n for n in range(700)}  # past one HSET slice of the script
        batch[1] = upsert(batch[1].session_id, user="user1", attrs=wide, created=True)
        assert not store.write(batch, time.time()).refused
        record = store.load(batch[1].session_id)
        assert record is not None and record["attributes"] == wide
        assert store.count() == COUNT
    finally:
        store.close()


def test_the_script_is_sent_again_after_the_server_forgets_it(store: RedisStore) -> None:
    store._client.script_flush()
    assert not store.write(creates(), time.time()).refused
    assert store.count() == COUNT


def test_a_large_batch_of_creates_is_one_command_per_chunk_on_one_server() -> None:
    keys = KeySchema("p")
    batch = creates(1000)
    steps = plan.write(keys, batch, time.time(), "o", 1000, 500, cluster=False)
    commands = next(steps)
    assert [c[1] for c in commands] == [BULK_CREATE.sha, BULK_CREATE.sha]
    assert commands[0][2] == 3 * 500 + 1  # hash, tombstone and user index each, one shard
    few = plan.write(
        keys, creates(redis_bulk.BULK_MIN - 1), time.time(), "o", 1000, 500, cluster=False
    )
    assert next(few)[0][1] == APPLY.sha


def test_a_batch_naming_a_session_twice_keeps_the_ordinary_path() -> None:
    batch: list[Any] = creates()
    batch.append(Delete(batch[0].session_id, "user0", time.time()))
    assert redis_bulk.split(batch) is None


def test_on_a_cluster_each_call_holds_one_hash_slot() -> None:
    from redis.crc import key_slot

    keys = KeySchema("p", shards=16)
    calls = redis_bulk.calls(keys, creates(300), 1, size=500, cluster=True)
    for command, group in calls:
        count = command[2]
        slots = {key_slot(k.encode()) for k in command[3 : 3 + count]}
        assert len(slots) == 1 and count == 2 * len(group)
