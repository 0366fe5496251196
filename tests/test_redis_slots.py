"""The pool's ``max_total`` across app servers sharing Redis: it counts the live sessions of
every server, on one server and on a 3-master cluster, from threads and from processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import (
    AsyncSessionService,
    PoolExhaustedError,
    PoolLimits,
    SessionService,
    Settings,
)
from pooled_sessions.adapters.redis.store import RedisStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(any_redis_url: str) -> str:
    return any_redis_url


def pool(max_total: int, max_wait: float) -> PoolLimits:
    return PoolLimits(max_total=max_total, max_wait=max_wait)


@pytest.fixture
def servers(url: str) -> Iterator[Callable[..., SessionService]]:
    built: list[SessionService] = []

    def make(**settings: Any) -> SessionService:
        built.append(SessionService(url, **settings))
        return built[-1]

    yield make
    for service in built:
        service.shutdown(timeout=2)


def slots_in_use(url: str, max_total: int) -> int:
    store = RedisStore(url, Settings(pool=pool(max_total, 0)))
    try:
        return store.slots_in_use()
    finally:
        store.close()


def test_two_servers_never_exceed_max_total_together(
    servers: Callable[..., SessionService], url: str
) -> None:
    a, b = servers(pool=pool(5, 0)), servers(pool=pool(5, 0))
    made: list[str] = []
    refused: list[str] = []
    gate = threading.Barrier(8)

    def logins(service: SessionService, name: str) -> None:
        gate.wait()
        for n in range(3):
            try:
                made.append(service.create_session(f"{name}-{n}"))
            except PoolExhaustedError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=logins, args=((a, b)[n % 2], f"t{n}")) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == 5 and len(refused) == 19
    assert all("all 5 live-session slots" in message for message in refused)
    assert any("every app server" in message for message in refused)
    assert slots_in_use(url, 5) == 5
    live = a.stats()["pool"]["active"] + b.stats()["pool"]["active"]
    assert live == 5  # refused claims gave their local slots back


def test_a_slot_freed_on_one_server_lets_the_other_proceed(
    servers: Callable[..., SessionService],
) -> None:
    a, b = servers(pool=pool(2, 0)), servers(pool=pool(2, 5.0))
    first = a.create_session("alice")
    a.create_session("bob")
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(b.create_session("carol")))
    waiter.start()
    time.sleep(0.3)
    assert not got  # b waits: both slots are a's
    started = time.monotonic()
    assert a.end_session(first)
    waiter.join(5)
    assert got and time.monotonic() - started < 1.0
    assert b.validate_session(got[0])
    with pytest.raises(PoolExhaustedError):
        a.create_session("dave")


def test_an_end_frees_its_slot_on_its_own_server_before_it_is_written(
    servers: Callable[..., SessionService],
) -> None:
    a = servers(
        pool=pool(1, 0), write_behind=True, save_delay_seconds=60, batch_save_threshold=1000
    )
    b = servers(pool=pool(1, 0))
    for n in range(5):  # logout and login at once, again and again: never refused
        sid = a.create_session(f"user{n}")
        sid = a.rotate_session(sid) or ""
        assert a.end_session(sid)
    a.create_session("last")
    a.force_save()
    with pytest.raises(PoolExhaustedError, match="every app server"):
        b.create_session("other")


@pytest.mark.redis
async def test_asyncio_services_share_the_limit(redis_url: str) -> None:
    services = [AsyncSessionService(redis_url, pool=pool(3, 0)) for _ in range(2)]
    try:
        results = await asyncio.gather(
            *(services[n % 2].create_session(f"user{n}") for n in range(8)),
            return_exceptions=True,
        )
        made = [(n % 2, r) for n, r in enumerate(results) if isinstance(r, str)]
        assert len(made) == 3
        assert sum(isinstance(r, PoolExhaustedError) for r in results) == 5
        owner, sid = made[0]
        assert await services[owner].end_session(sid)
        await services[owner].force_save()  # the end is written: the slot is free everywhere
        assert await services[1 - owner].create_session("again")
    finally:
        for service in services:
            await service.shutdown(timeout=2)
    assert slots_in_use(redis_url, 3) == 3


CHILD = """
import json, sys
from pooled_sessions import PoolExhaustedError, PoolLimits, SessionService
url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = PoolLimits(max_total=8, max_wait=0)
made = refused = 0
sys.stdin.readline()  # start together
with SessionService(url, pool=config) as service:
    for n in range(count):
        try:
            service.create_session(f"{name}-{n}")
            made += 1
        except PoolExhaustedError:
            refused += 1
print(json.dumps({"made": made, "refused": refused}))
"""


def test_two_processes_never_exceed_max_total_together(url: str, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children = [
        subprocess.Popen(
            [sys.executable, str(script), url, f"p{n}", "6"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        time.sleep(0.5)  # both have imported; then they start at once
        outputs = [child.communicate("go\n", timeout=60)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    counts = [json.loads(out) for out in outputs]
    assert sum(c["made"] for c in counts) == 8
    assert sum(c["refused"] for c in counts) == 4
    assert slots_in_use(url, 8) == 8
