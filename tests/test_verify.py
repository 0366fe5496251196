"""``migrate --verify``: batched reads of the target, and what counts as a faithful copy."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions.adapters.memory import MemoryStore
from pooled_sessions.adapters.redis import RedisStore, keys, plan
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Record
from pooled_sessions.tools import copies
from pooled_sessions.tools.copies import IDENTICAL, target_of
from pooled_sessions.tools.migrate import migrate, upsert_of
from pooled_sessions.tools.stores import open_source, open_target
from pooled_sessions.tools.verify import Verification, digest, verify
from tests import storekit
from tests.storekit import SETTINGS, make_record, sample, session_id

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("aiofile", id="aiofile"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]
REDIS_KINDS = [kind for kind in KINDS if kind.id in ("redis", "cluster")]


@pytest.fixture
def url_of(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``url_of(kind)``: a fresh store URL of that kind."""

    def make(kind: str) -> str:
        if kind == "memory":
            return storekit.memory_url()
        if kind in ("file", "aiofile"):
            url = storekit.file_url(tmp_path, f"t{time.monotonic_ns()}")
            return url if kind == "file" else f"aiofile://{url}"
        server = request.getfixturevalue(
            {"redis": "redis_server", "cluster": "redis_cluster"}[kind]
        )
        return storekit.prefixed(server.url, "v")

    return make


def check(source_url: str, target_url: str, batch_size: int = 7) -> Verification:
    source, target = open_source(source_url, SETTINGS), open_target(target_url, SETTINGS)
    try:
        return verify(source, target, batch_size, set(), time.time, lambda _: None)
    finally:
        target.close()
        source.close()


def copied(url_of: Callable[[str], str], kind: str, records: dict[str, Record]) -> tuple[str, str]:
    """A memory source holding ``records``, migrated into a fresh store of ``kind``."""
    source_url, target_url = storekit.memory_url(), url_of(kind)
    storekit.seed(source_url, records)
    source, target = open_source(source_url, SETTINGS), open_target(target_url, SETTINGS)
    try:
        migrate(source, target)
    finally:
        target.close()
    return source_url, target_url


@pytest.mark.parametrize("kind", ["memory", "file", "aiofile"])
def test_load_many_agrees_with_load(kind: str, url_of: Callable[[str], str]) -> None:
    url = url_of(kind)
    storekit.seed(url, sample(5))
    store = open_target(url, SETTINGS)
    try:
        ids = [session_id(n) for n in (4, 99, 0, 2)]
        many = store.load_many(ids)  # type: ignore[attr-defined]
        assert list(many) == ids
        assert many == {sid: store.load(sid) for sid in ids} and many[session_id(99)] is None
    finally:
        store.close()


class CountingStore(MemoryStore):
    """A memory store that counts its reads."""

    def __init__(self) -> None:
        super().__init__(StoreURL.parse(storekit.memory_url()), SETTINGS)
        self.loads = self.bulk_loads = 0

    def load(self, session_id: str) -> Record | None:
        self.loads += 1
        return super().load(session_id)

    def load_many(self, session_ids: Sequence[str]) -> dict[str, Record | None]:
        self.bulk_loads += 1
        return super().load_many(session_ids)


def test_verify_reads_the_target_a_batch_at_a_time() -> None:
    source_url = storekit.memory_url()
    storekit.seed(source_url, sample(23))
    source, target = open_source(source_url, SETTINGS), CountingStore()
    migrate(source, target, batch_size=10)
    target.loads = target.bulk_loads = 0
    result = verify(source, target, 10, set(), time.time, lambda _: None)
    assert result.ok and result.source_count == 23
    assert (target.loads, target.bulk_loads) == (0, 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("change", "differs"),
    [
        pytest.param({"attributes": {"n": True}}, True, id="int-became-bool"),
        pytest.param({"attributes": {"n": 1.0}}, True, id="int-became-float"),
        pytest.param({"attributes": {"n": 1, "extra": None}}, True, id="attribute-added"),
        pytest.param({"created_at": -0.0004}, False, id="time-within-a-millisecond"),
        pytest.param({"created_at": -0.01}, True, id="time-off-by-10ms"),
        pytest.param({"user_agent": "Other/1.0"}, True, id="user-agent"),
    ],
)
def test_verify_tells_a_changed_copy_apart(
    kind: str, change: dict[str, Any], differs: bool, url_of: Callable[[str], str]
) -> None:
    now = time.time()
    records = {session_id(n): make_record(n, now, attributes={"n": 1}) for n in range(3)}
    source_url, target_url = copied(url_of, kind, records)
    assert check(source_url, target_url).ok
    sid = session_id(1)
    edited: Any = dict(records[sid])
    for name, value in change.items():
        edited[name] = edited[name] + value if name == "created_at" else value
    storekit.write(target_url, [upsert_of(sid, edited)])
    result = check(source_url, target_url)
    assert (result.different, result.missing, result.ok) == (int(differs), 0, not differs)
    assert (result.source_checksum == result.target_checksum) is not differs


@pytest.mark.parametrize("kind", REDIS_KINDS)
@pytest.mark.parametrize("count", [3, 40], ids=["apply", "bulk"])
def test_a_faithful_redis_copy_is_recognised_undecoded(
    kind: str, count: int, url_of: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write path leaves exactly `record_hash`, so nothing needs decoding."""
    decoded: list[str] = []
    real = keys.decode_hash

    def decode(sid: str, raw: Any, where: str) -> Record | None:
        decoded.append(sid)
        return real(sid, raw, where)

    monkeypatch.setattr(copies, "decode_hash", decode)
    records = sample(count)
    source_url, target_url = copied(url_of, kind, records)
    result = check(source_url, target_url)
    assert result.ok and result.source_count == count and decoded == []
    sid = session_id(2)
    storekit.write(target_url, [upsert_of(sid, {**records[sid], "attributes": {"a": 1}})])
    result = check(source_url, target_url)
    assert result.different == 1 and decoded == [sid]


@pytest.mark.redis
def test_redis_hashes_read_with_a_client_that_decodes_replies(redis_server: Any) -> None:
    import redis

    url = storekit.prefixed(redis_server.url, "dec")
    records = sample(4)
    storekit.seed(url, records)
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    store = RedisStore(url, SETTINGS, client=client)
    try:
        found = target_of(store).read(
            [(sid, rec, target_of(store).form(rec)) for sid, rec in records.items()]
        )
        assert found == [IDENTICAL] * 4
        assert store._run(plan.load_hashes(store.keys, ["nope"], False)) == [{}]
    finally:
        store.close()
        client.close()


def test_digest_keeps_apart_forms_that_join_alike() -> None:
    assert digest("s", {b"a\0b": b"c"}) != digest("s", {b"a": b"b\0c"})
    assert digest("s", {b"a": b"b"}) != digest("t", {b"a": b"b"})


def test_a_verify_interrupted_between_batches_stops_its_reader() -> None:
    source_url = storekit.memory_url()
    storekit.seed(source_url, sample(30))
    source, target = open_source(source_url, SETTINGS), open_target(source_url, SETTINGS)

    def tick(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify(source, target, 10, set(), time.time, tick)
    assert not [t for t in _threads() if t.startswith("pooled-sessions-verify")]


def _threads() -> Iterator[str]:
    import threading

    return (thread.name for thread in threading.enumerate())
