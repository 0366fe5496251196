"""Several app servers on one Redis: revocation, concurrent updates, separate OS processes.

Each "server" is a SessionService of its own (its own connections, cache and flusher);
two tests use real separate processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pooled_sessions import SessionService
from tests.redis_servers import RedisServer

REVOCATION_LIMIT = 0.100


@pytest.fixture
def url(any_redis_url: str) -> str:
    """A store URL with a fresh prefix, on one server or on the cluster."""
    return any_redis_url


@pytest.fixture
def servers(url: str) -> Iterator[Callable[..., SessionService]]:
    """Build app servers on one store; all are shut down at teardown."""
    built: list[SessionService] = []

    def make(**settings: Any) -> SessionService:
        service = SessionService(url, **settings)
        built.append(service)
        return service

    yield make
    for service in built:
        service.shutdown(timeout=2)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


def test_an_end_is_refused_on_every_server_within_100_ms(
    servers: Callable[..., SessionService],
) -> None:
    a, b, c = servers(), servers(), servers()
    ids = [a.create_session(f"user{n}", {"n": n}) for n in range(20)]
    a.force_save()
    for sid in ids:  # b and c now hold every session in their caches
        assert b.validate_session(sid) and c.validate_session(sid)
    loads_before = b.stats()["live_sessions"]
    assert loads_before == 20
    delays = []
    for sid in ids:
        started = time.monotonic()
        assert a.end_session(sid)
        assert wait_until(lambda: not b.validate_session(sid) and not c.validate_session(sid))  # noqa: B023
        delays.append(time.monotonic() - started)
    assert max(delays) < REVOCATION_LIMIT, f"slowest revocation {max(delays) * 1000:.1f} ms"
    assert b.stats()["live_sessions"] == 0


def test_a_peer_ending_a_session_another_is_updating_wins(
    servers: Callable[..., SessionService],
) -> None:
    a, b = servers(save_delay_seconds=0.05), servers(save_delay_seconds=0.05)
    sid = a.create_session("alice", {"cart": []})
    a.force_save()
    assert b.validate_session(sid)
    stop = threading.Event()

    def keep_updating() -> None:
        n = 0
        while not stop.is_set():
            b.update_session(sid, {"cart": [n]})
            n += 1
            time.sleep(0.001)

    worker = threading.Thread(target=keep_updating)
    worker.start()
    time.sleep(0.1)
    assert a.end_session(sid)
    time.sleep(0.2)
    stop.set()
    worker.join()
    b.force_save()
    assert not b.validate_session(sid) and not a.validate_session(sid)
    assert servers().get_session(sid) is None  # no late flush brought it back


def test_concurrent_updates_of_different_attributes_are_all_kept(
    servers: Callable[..., SessionService],
) -> None:
    a, b = servers(save_delay_seconds=0.02), servers(save_delay_seconds=0.02)
    ids = [a.create_session(f"user{n}", {"a": -1, "b": -1}) for n in range(10)]
    a.force_save()

    def update(service: SessionService, name: str) -> None:
        for round_ in range(20):
            for sid in ids:
                assert service.update_session(sid, {name: round_})

    workers = [
        threading.Thread(target=update, args=(a, "a")),
        threading.Thread(target=update, args=(b, "b")),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    a.force_save()
    b.force_save()
    fresh = servers()
    for sid in ids:
        session = fresh.get_session(sid)
        assert session is not None and session.attributes == {"a": 19, "b": 19}


@pytest.mark.redis
def test_a_lost_event_makes_servers_read_again(redis_server: RedisServer, redis_url: str) -> None:
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid = a.create_session("alice", {"plan": "free"})
        a.force_save()
        assert b.get_session(sid) is not None  # cached on b
        prefix = redis_url.split("prefix=")[1]
        client = redis.Redis(port=redis_server.port)
        # a change made while b's subscription is down: b never gets its event
        client.client_kill_filter(_type="pubsub")
        client.hset(f"{prefix}:s:{{{sid}}}", ".plan", '"pro"')
        client.close()
        assert wait_until(
            lambda: (s := b.get_session(sid)) is not None and s.attributes["plan"] == "pro"
        )


SCRIPT = """
import json, sys
from pooled_sessions import SessionService
url, mode = sys.argv[1], sys.argv[2]
ids = json.loads(sys.stdin.read() or "[]")
with SessionService(url) as service:
    if mode == "create":
        ids = [service.create_session(f"user{n}", {"from": "child", "n": n}) for n in range(5)]
        service.force_save()
        print(json.dumps(ids))
    else:
        found = {}
        for sid in ids:
            result = service.validate_session(sid)
            found[sid] = result.session.attributes if result else result.reason.value
        print(json.dumps(found))
"""


def run_child(tmp_path: Path, url: str, mode: str, ids: list[str] | None = None) -> Any:
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), url, mode],
        input=json.dumps(ids or []),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_processes_share_sessions(
    servers: Callable[..., SessionService], url: str, tmp_path: Path
) -> None:
    ids = run_child(tmp_path, url, "create")
    here = servers()
    for n, sid in enumerate(ids):
        result = here.validate_session(sid)
        assert result and result.session is not None
        assert result.session.attributes == {"from": "child", "n": n}
    assert here.update_session(ids[0], {"seen_by": "parent"})
    assert here.end_session(ids[1])
    here.force_save()
    found = run_child(tmp_path, url, "validate", ids)
    assert found[ids[0]] == {"from": "child", "n": 0, "seen_by": "parent"}
    assert found[ids[1]] == "not_found"
    assert found[ids[4]] == {"from": "child", "n": 4}
