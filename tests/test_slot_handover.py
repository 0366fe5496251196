"""A pool slot handed over (an end freeing its slot on its own server before it is written)
or freed is never brought back by a later flush, and a rotation's write moves its slot to
the new id: ``max_total`` holds across processes on one Redis server and on the 3-master
cluster. The engine's side first: which earlier ids a rotation's write names."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import PoolExhaustedError, PoolLimits, SessionService, Settings
from pooled_sessions.adapters.redis import events
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.codec import Upsert, WriteResult
from pooled_sessions.engine.engine import ClaimSlot, Engine, Flow, Flush, StoreOffers
from pooled_sessions.errors import StoreUnavailableError
from tests.enginekit import Clock

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 6
PROCESSES, THREADS, SECONDS = 2, 8, 4.0
COUNT_HASHES = "return #redis.call('KEYS', ARGV[1])"


# -- the engine: the ids a rotation's write names --------------------------------------


class SharedRig:
    """An engine whose store counts slots for every server; every claim is granted."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.engine = Engine(
            Settings(
                backend="memory://",
                pool=PoolLimits(max_total=10, max_wait=0),
                write_behind=True,  # the rigs drive flushes by hand
            ),
            clock=self.clock.wall,
            monotonic=self.clock.monotonic,
            offers=StoreOffers(claim_slot=True),
        )

    def run(self, op: Flow[Any]) -> Any:
        reply: Any = None
        while True:
            try:
                request = op.send(reply)
            except StopIteration as stop:
                return stop.value
            assert isinstance(request, ClaimSlot), request
            reply = True

    def take(self) -> Flush:
        flush = self.engine.take_flush()
        assert flush is not None
        return flush

    def upsert_of(self, flush: Flush, session_id: str) -> Upsert:
        (found,) = [op for op in flush.operations if op.session_id == session_id]
        assert isinstance(found, Upsert)
        return found


def test_a_rotation_names_the_id_the_store_counts_it_under() -> None:
    rig = SharedRig()
    first = rig.run(rig.engine.create("alice", {"n": 1}, None))
    created = rig.take()
    assert rig.upsert_of(created, first).rotated_from == ()  # its claim took its slot
    rig.engine.flush_succeeded(created, WriteResult(), 0.001)
    second = rig.run(rig.engine.rotate(first))
    third = rig.run(rig.engine.rotate(second))  # again, before the first rotation is written
    flush = rig.take()
    assert rig.upsert_of(flush, third).rotated_from == (second, first)
    assert all(op.session_id != second or not isinstance(op, Upsert) for op in flush.operations)
    rig.engine.flush_succeeded(flush, WriteResult(), 0.001)
    rig.run(rig.engine.update(third, {"n": 2}))
    assert rig.upsert_of(rig.take(), third).rotated_from == ()  # written: nothing to move


def test_a_rotation_in_flight_while_rotated_again_names_both_earlier_ids() -> None:
    rig = SharedRig()
    first = rig.run(rig.engine.create("alice", None, None))
    rig.engine.flush_succeeded(rig.take(), WriteResult(), 0.001)
    second = rig.run(rig.engine.rotate(first))
    in_flight = rig.take()
    third = rig.run(rig.engine.rotate(second))
    rig.engine.flush_failed(in_flight, StoreUnavailableError("down"))  # the move never landed
    assert rig.upsert_of(rig.take(), third).rotated_from == (second, first)


def test_a_rotation_whose_earlier_write_landed_names_only_the_last_id() -> None:
    rig = SharedRig()
    first = rig.run(rig.engine.create("alice", None, None))
    rig.engine.flush_succeeded(rig.take(), WriteResult(), 0.001)
    second = rig.run(rig.engine.rotate(first))
    in_flight = rig.take()
    third = rig.run(rig.engine.rotate(second))
    rig.engine.flush_succeeded(in_flight, WriteResult(), 0.001)  # first's slot is second's now
    assert rig.upsert_of(rig.take(), third).rotated_from == (second,)


def test_a_retried_end_is_written_before_the_login_that_took_its_slot() -> None:
    rig = SharedRig()
    ended = rig.run(rig.engine.create("alice", None, None))
    rig.engine.flush_succeeded(rig.take(), WriteResult(), 0.001)
    assert rig.run(rig.engine.end(ended))
    in_flight = rig.take()
    successor = rig.run(rig.engine.create("bob", None, None))  # takes the ended one's slot
    rig.engine.flush_failed(in_flight, StoreUnavailableError("down"))
    assert [op.session_id for op in rig.take().operations] == [ended, successor]


# -- the store and the services on Redis ----------------------------------------------


@pytest.fixture
def url(any_redis_url: str) -> str:
    return any_redis_url


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    opened = RedisStore(url, Settings(pool=PoolLimits(max_total=LIMIT, max_wait=0)))
    yield opened
    opened.close()


def slot_members(store: RedisStore) -> set[str]:
    """Ids holding a live slot now."""
    raw = store._client.zrangebyscore(store.keys.slots, f"({time.time()!r}", "+inf")
    return {m.decode() if isinstance(m, bytes) else m for m in raw}


def live_hashes(store: RedisStore) -> set[str]:
    """Ids of the session hashes in Redis (a scan: exact only while nothing writes)."""
    pattern = f"{store.keys.prefix}:s:*"
    found = set()
    for key in store._client.scan_iter(match=pattern, count=1000):
        text = key.decode() if isinstance(key, bytes) else key
        found.add(text.rsplit("{", 1)[1].rstrip("}"))
    return found


@pytest.fixture
def services(url: str) -> Iterator[list[SessionService]]:
    built = [SessionService(url, pool=PoolLimits(max_total=2, max_wait=0)) for _ in range(2)]
    yield built
    for service in built:
        service.shutdown(timeout=2)


def test_a_rotation_on_another_server_moves_the_slot(
    services: list[SessionService], store: RedisStore
) -> None:
    a, b = services
    sid = a.create_session("alice")
    a.force_save()
    rotated = b.rotate_session(sid)
    assert rotated is not None
    b.force_save()
    assert slot_members(store) == {rotated}
    a.create_session("bob")
    with pytest.raises(PoolExhaustedError, match="every app server"):
        b.create_session("carol")  # the rotated session still holds its slot


def test_a_refused_rotation_leaves_no_slot_held(
    services: list[SessionService], store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b rotates a session a ended, before b heard of the end: Redis refuses the new id,
    and neither id holds a pool slot afterwards."""
    a, b = services
    sid = a.create_session("alice")
    assert b.get_session(sid) is not None
    monkeypatch.setattr(events.EventListener, "catch_up", lambda self: None)
    monkeypatch.setattr(events.Subscription, "handle", lambda self, message: True)
    assert a.end_session(sid)
    assert b.rotate_session(sid) is None
    a.force_save()
    b.force_save()
    assert slot_members(store) == set() == live_hashes(store)


def test_rotations_before_a_write_move_the_slot_once(
    services: list[SessionService], store: RedisStore
) -> None:
    a, b = services
    sid = a.create_session("alice")
    a.force_save()
    last = a.rotate_session(a.rotate_session(sid) or "") or ""
    a.force_save()
    assert slot_members(store) == {last} == live_hashes(store)
    b.create_session("bob")
    with pytest.raises(PoolExhaustedError):
        b.create_session("carol")
    assert a.end_session(last)
    a.force_save()
    b.force_save()
    assert slot_members(store) == live_hashes(store) == {b.sessions_of("bob")[0]}


CHILD = """
import json, random, sys, threading, time
from pooled_sessions import PoolExhaustedError, PoolLimits, SessionService
url, name, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
limit = int(sys.argv[5])
counts = {"made": 0, "refused": 0, "rotated": 0, "ended": 0}
lock = threading.Lock()
sys.stdin.readline()  # start together

def hammer(service, seed):
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sid = service.create_session(f"{name}-{seed}", {"n": seed})
        except PoolExhaustedError:
            with lock:
                counts["refused"] += 1
            continue
        with lock:
            counts["made"] += 1
        time.sleep(rng.uniform(0, 0.02))
        if rng.random() < 0.4:
            sid = service.rotate_session(sid) or sid
            with lock:
                counts["rotated"] += 1
        if service.end_session(sid):  # the next login on this server takes its slot at once
            with lock:
                counts["ended"] += 1

pool = PoolLimits(max_total=limit, max_wait=0.01)
with SessionService(url, pool=pool, batch_save_threshold=4, save_delay_seconds=0.01) as service:
    workers = [threading.Thread(target=hammer, args=(service, n)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
print(json.dumps(counts))
"""


class Sampler:
    """Counts the slots (and, on one server, the session hashes, in one atomic call)
    every millisecond or so while the children run; keeps the highest of each."""

    def __init__(self, store: RedisStore, cluster: bool) -> None:
        self.store, self.cluster = store, cluster
        self.most_slots = self.most_hashes = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        client, keys = self.store._client, self.store.keys
        while not self._stop.is_set():
            slots = client.zcount(keys.slots, f"({time.time()!r}", "+inf")
            self.most_slots = max(self.most_slots, int(slots))
            if not self.cluster:  # one server: KEYS inside a script is one atomic look
                hashes = client.eval(COUNT_HASHES, 0, f"{keys.prefix}:s:*")
                self.most_hashes = max(self.most_hashes, int(hashes))
            self.samples += 1
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_processes_hammering_logins_never_exceed_max_total(
    url: str, store: RedisStore, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children = [
        subprocess.Popen(
            [sys.executable, str(script), url, f"p{n}", str(THREADS), str(SECONDS), str(LIMIT)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    cluster = store.options.cluster
    sampler = Sampler(store, cluster)
    try:
        time.sleep(0.5)  # both have imported; then they start at once
        results = [child.communicate("go\n", timeout=120) for child in children]
    finally:
        sampler.stop()
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (_, errors) in zip(children, results, strict=True):
        assert child.returncode == 0, errors
    counts: list[dict[str, Any]] = [json.loads(out) for out, _ in results]
    assert sampler.most_slots <= LIMIT, f"{sampler.most_slots} slots held for {LIMIT}"
    if not cluster:
        assert sampler.most_hashes <= LIMIT, f"{sampler.most_hashes} live for {LIMIT}"
    assert sampler.samples > 20  # a few thousand on a quiet machine
    assert sum(c["made"] for c in counts) > 50, counts  # thousands on a quiet machine
    assert sum(c["refused"] for c in counts) > 0, counts  # the limit was reached
    assert sum(c["rotated"] for c in counts) > 10, counts
    assert slot_members(store) == live_hashes(store) == set()  # every session was ended
