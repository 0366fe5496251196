"""Several OS processes on one sessions file, and a writer killed with SIGKILL mid-flight."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pooled_sessions import SessionService
from tests import procworkers
from tests.filekit import temp_files

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 4
KILLS = 20


def test_four_processes_share_one_file_and_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "sessions.json")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    inboxes = [context.Queue() for _ in range(PROCESSES)]
    children = [
        context.Process(target=procworkers.share, args=(path, index, out, inboxes[index]))
        for index in range(PROCESSES)
    ]
    for child in children:
        child.start()
    try:
        everyone: dict[int, list[str]] = {}
        while len(everyone) < PROCESSES:
            kind, index, ids = out.get(timeout=120)
            assert kind == "ids"
            everyone[index] = ids
        for inbox in inboxes:
            inbox.put(everyone)
        problems: list[str] = []
        for phase in ("checked", "done"):
            for _ in children:
                kind, index, found = out.get(timeout=120)
                assert kind == phase
                problems.extend(found)
            for inbox in inboxes:
                inbox.put(None)
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    assert [child.exitcode for child in children] == [0] * PROCESSES
    assert problems == []
    with SessionService(path) as svc:
        for index, ids in everyone.items():
            kept = ids[: -procworkers.ENDED_PER_PROCESS]
            assert set(svc.sessions_of(f"p{index}")) == set(kept)
            for sid in ids[-procworkers.ENDED_PER_PROCESS :]:
                assert svc.get_session(sid) is None, "an ended session stays ended"
            for n, sid in enumerate(kept):
                session = svc.get_session(sid)
                assert session is not None
                assert session.attributes["owner"] == index and session.attributes["n"] == n
                assert session.attributes.get("touched", False) == (n % 3 == 0)
            for sid in ids[: procworkers.CROSS_WRITES]:
                session = svc.get_session(sid)
                assert session is not None
                seen = {key for key in session.attributes if key.startswith("seen_by_")}
                assert seen == {f"seen_by_{k}" for k in range(PROCESSES) if k != index}


def test_a_writer_killed_at_random_moments_never_loses_a_confirmed_session(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.json"
    rng = random.Random(20)
    confirmed: dict[str, int] = {}
    strays_seen = 0
    for _ in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.procworkers", "writer", str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = child.stdout.readline() if child.stdout else ""
        assert first.endswith("\n"), "the writer confirms a first session"
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        output, errors = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, errors
        for line in (first + output).splitlines(keepends=True):
            if line.endswith("\n"):  # a line cut by the kill was never confirmed
                sid, number = line.split()
                confirmed[sid] = int(number)
        strays_seen += bool(temp_files(tmp_path))
        with SessionService(path) as svc:  # parses, or this raises CorruptStoreError
            assert temp_files(tmp_path) == [], "strays of the killed writer are removed"
            for sid, n in confirmed.items():
                session = svc.get_session(sid)
                assert session is not None, f"confirmed session {sid[:8]} was lost"
                assert session.attributes["n"] == n
    assert len(confirmed) >= KILLS * 2
    print(f"{len(confirmed)} confirmed sessions, {strays_seen} kills left a temp file")
    assert os.stat(path).st_mode & 0o777 == 0o600
