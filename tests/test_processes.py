"""Several OS processes on one store, each with a service of its own, in the default mode:
what one commits, the others see on their next call (on Redis, once its event arrives).

File, aiofile (`AsyncSessionService`), Redis and Redis Cluster; the workers are spawned
processes running `tests.procworkers.serve`. A service created before ``fork()`` works in
the child and in the parent, and nothing the parent owed is written twice.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import SessionService
from tests import procworkers

ROOT = Path(__file__).resolve().parents[1]
REDIS_WAIT = 2.0
"""Seconds another Redis server may take to hear a change (its event); a file has none."""
ROUNDS = 50


@dataclass
class Shared:
    """A store the worker processes share: its URL, the service kind, and how long a
    process may wait to see another's change (0: its next call sees it)."""

    url: str
    asynchronous: bool
    wait: float


@pytest.fixture(
    params=[
        pytest.param("file"),
        pytest.param("aiofile"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ]
)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Shared:
    kind = request.param
    if kind == "file":
        return Shared(str(tmp_path / "sessions.json"), False, 0.0)
    if kind == "aiofile":
        return Shared(f"aiofile://{tmp_path / 'sessions.json'}", True, 0.0)
    url = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    return Shared(url, False, REDIS_WAIT)


class Peers:
    """Worker processes on one store; `ask` runs a `procworkers.COMMANDS` entry in one."""

    def __init__(self, store: Shared, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.inboxes = [context.Queue() for _ in range(count)]
        self.outboxes = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(
                target=procworkers.serve,
                args=(store.url, store.asynchronous, self.inboxes[n], self.outboxes[n]),
            )
            for n in range(count)
        ]
        for process in self.processes:
            process.start()

    def ask(self, index: int, *command: Any) -> Any:
        self.inboxes[index].put(command)
        status, value = self.outboxes[index].get(timeout=120)
        assert status == "ok", f"process {index}, {command[0]}: {value}"
        return value

    def close(self) -> None:
        for n, process in enumerate(self.processes):
            if process.is_alive():
                self.ask(n, "stop")
            process.join(30)
            if process.is_alive():
                process.kill()
        assert [p.exitcode for p in self.processes] == [0] * len(self.processes)


@contextmanager
def peers(store: Shared, count: int) -> Iterator[Peers]:
    group = Peers(store, count)
    try:
        yield group
    finally:
        group.close()


def test_a_session_created_on_one_process_is_valid_on_the_others_at_once(
    shared: Shared,
) -> None:
    with peers(shared, 3) as group:
        warm = group.ask(1, "create", "warm", {})  # the others have read the store before
        assert group.ask(2, "validate", warm)[0]
        for n in range(5):
            sid = group.ask(0, "create", f"user{n}", {"n": n})
            for other in (1, 2):
                assert group.ask(other, "validate", sid) == [True, "ok", {"n": n}]


def test_read_modify_write_alternating_between_processes_loses_nothing(shared: Shared) -> None:
    count = 4
    with peers(shared, count) as group:
        sid = group.ask(0, "create", "shopper", {"cart": []})
        for n in range(count):  # every process holds the session in its cache
            assert group.ask(n, "validate", sid)[0]
        rereads, waits = 0, [0.0]
        for item in range(ROUNDS):
            seen, again, waited = group.ask(item % count, "append", sid, item, shared.wait)
            assert seen == item, f"round {item}: process {item % count} read a stale cart"
            rereads += again
            waits.append(waited)
        final = group.ask(1, "validate", sid)
    assert final[2] == {"cart": list(range(ROUNDS))}
    with SessionService(shared.url.replace("aiofile://", "file://")) as judge:
        session = judge.get_session(sid)
        assert session is not None and session.attributes == {"cart": list(range(ROUNDS))}
    if shared.wait == 0.0:
        assert rereads == 0, "a file's change is seen at the next call"
    print(f"{rereads} reads again; longest wait for a change: {max(waits) * 1000:.2f} ms")


def test_an_end_on_one_process_is_refused_by_the_others(shared: Shared) -> None:
    with peers(shared, 3) as group:
        ids = [group.ask(0, "create", f"user{n}", {}) for n in range(5)]
        for sid in ids:  # cached everywhere
            assert group.ask(1, "validate", sid)[0] and group.ask(2, "validate", sid)[0]
        rereads = 0
        for sid in ids:
            assert group.ask(0, "end", sid)
            for other in (1, 2):
                refused = group.ask(other, "refused_within", sid, shared.wait)
                assert refused is not None, f"process {other} still accepts an ended session"
                rereads += refused[0]
    if shared.wait == 0.0:
        assert rereads == 0, "refused at the next call"


# -- fork() -------------------------------------------------------------------------------------


def run_fork(url: str, mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.procworkers", "fork", url, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return seen


FORK_STORES = [
    pytest.param("file", id="file"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


def fork_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "file":
        return str(tmp_path / f"{uuid.uuid4().hex}.json")
    value: str = request.getfixturevalue("redis_url" if kind == "redis" else "cluster_url")
    return value


@pytest.mark.parametrize("mode", ["commit", "write-behind"])
@pytest.mark.parametrize("kind", FORK_STORES)
def test_a_service_created_before_fork_works_in_the_child_and_the_parent(
    kind: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seen = run_fork(fork_url(kind, tmp_path, request), mode)
    child = seen.pop("child")
    assert seen.pop("child_exit") == 0, child
    assert child.pop("ended")
    assert child.pop("sees_owed") is (mode == "commit"), "the parent's cache is not the child's"
    assert all(child.values()), child
    assert seen.pop("owed_stored_before_the_parent_flushed") is (mode == "commit"), (
        "a change the parent owed is written by the parent alone"
    )
    assert all(seen.values()), seen


@pytest.mark.parametrize("kind", ["aiofile", pytest.param("redis", marks=pytest.mark.redis)])
def test_an_asyncio_service_rebinds_to_the_childs_loop(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "aiofile":
        url = f"aiofile://{tmp_path / 'sessions.json'}"
    else:
        url = fork_url(kind, tmp_path, request)
    seen = run_fork(url, "async")
    child = seen.pop("child")
    assert seen.pop("child_exit") == 0, child
    assert child.pop("ended") and all(child.values()), child
    assert all(seen.values()), seen
