"""Two app servers creating one custom session id at once: the store keeps exactly one
session, written whole; the other server's creation is refused, never merged into it.

Real OS processes on one JSON file and on one Redis (server and cluster), blocking and
asyncio services; the engine's side is in tests/test_engine_creates.py and the stores'
in the store contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import SessionService

ROOT = Path(__file__).resolve().parent.parent
SID = "minted-by-the-framework-0001"
CHILD = """
import asyncio, json, sys
from pooled_sessions import AsyncSessionService, SessionService
url, name, mode, sid = sys.argv[1:5]
settings = {"write_behind": True, "save_delay_seconds": 60, "batch_save_threshold": 10**6}


def step(text):
    print(text, flush=True)
    return sys.stdin.readline()


def outcome(result):
    user = result.session.username if result.session is not None else None
    return json.dumps({"valid": bool(result), "reason": result.reason.value, "user": user})


def blocking():
    with SessionService(url, **settings) as service:
        step("ready")
        service.create_session(name, {"owner": name, f"only_{name}": True}, session_id=sid)
        step("created")
        service.force_save()
        print(outcome(service.validate_session(sid)), flush=True)


async def asynchronous():
    async with AsyncSessionService(url, **settings) as service:
        await asyncio.to_thread(step, "ready")
        attributes = {"owner": name, f"only_{name}": True}
        await service.create_session(name, attributes, session_id=sid)
        await asyncio.to_thread(step, "created")
        await service.async_force_save()
        print(outcome(await service.validate_session(sid)), flush=True)


blocking() if mode == "sync" else asyncio.run(asynchronous())
"""


def race(script: Path, url: str, mode: str) -> dict[str, dict[str, Any]]:
    """Both children create ``SID`` before either writes it, then both write at once."""
    names = ("p0", "p1")
    children = {
        name: subprocess.Popen(
            [sys.executable, str(script), url, name, mode, SID],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    try:
        for expected in ("ready", "created"):
            for child in children.values():
                assert child.stdout is not None and child.stdout.readline().strip() == expected
            for child in children.values():
                assert child.stdin is not None
                child.stdin.write("next\n")
                child.stdin.flush()
        replies = {name: child.communicate(timeout=60)[0] for name, child in children.items()}
        return {name: json.loads(reply) for name, reply in replies.items()}
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()


@pytest.fixture(
    params=[
        pytest.param(("file", "sync"), id="file"),
        pytest.param(("file", "async"), id="aiofile"),
        pytest.param(("redis", "sync"), id="redis", marks=pytest.mark.redis),
        pytest.param(("redis", "async"), id="async-redis", marks=pytest.mark.redis),
        pytest.param(("cluster", "sync"), id="cluster", marks=pytest.mark.cluster),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """A store URL of this test, and the children's mode (blocking or asyncio service)."""
    kind, mode = request.param
    if kind == "file":
        path = tmp_path / "sessions.json"
        return (str(path) if mode == "sync" else f"aiofile://{path}"), mode
    fixture = "redis_url" if kind == "redis" else "cluster_url"
    return str(request.getfixturevalue(fixture)), mode


def test_two_processes_creating_one_id_leave_one_whole_session(
    store: tuple[str, str], tmp_path: Path
) -> None:
    url, mode = store
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    outcomes = race(script, url, mode)
    winners = [name for name, seen in outcomes.items() if seen["valid"]]
    assert len(winners) == 1, f"exactly one creation must stand: {outcomes}"
    (winner,) = winners
    (loser,) = set(outcomes) - {winner}
    assert outcomes[winner]["user"] == winner
    assert outcomes[loser]["reason"] == "not_found", "the refused server still serves the id"
    with SessionService(url.replace("aiofile://", "")) as reader:
        stored = reader.get_session(SID)
        assert stored is not None and stored.username == winner
        assert stored.attributes == {"owner": winner, f"only_{winner}": True}, "merged"
        assert reader.sessions_of(loser) == []
