"""Several OS processes on one sessions file, and writers killed with SIGKILL mid-flight:
at random moments, and at each step of a journal append and of a compaction."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pooled_sessions import SessionService
from tests import procworkers
from tests.filekit import journal_of, stored, temp_files

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


# -- the journal under kill -9 ---------------------------------------------------------------


def acknowledged_by(child: subprocess.Popen[str], output: str) -> dict[str, int]:
    """``id n`` lines the child finished (a line cut by the kill was never acknowledged)."""
    found = {}
    for line in output.splitlines(keepends=True):
        if line.endswith("\n"):
            sid, number = line.split()
            found[sid] = int(number)
    return found


def check_reopened(path: Path, acknowledged: dict[str, int]) -> None:
    """The files open, and every acknowledged session is there with its data."""
    with SessionService(path) as svc:
        for sid, n in acknowledged.items():
            session = svc.get_session(sid)
            assert session is not None, f"acknowledged session {sid} was lost"
            assert session.attributes["n"] == n


def test_a_journal_writer_killed_at_random_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Kill -9 a process appending one session per write, with a journal folded every
    64 KiB, so kills land in appends, fdatasyncs and compactions alike."""
    path = tmp_path / "sessions.json"
    rng = random.Random(41)
    acknowledged: dict[str, int] = {}
    seen = {"torn tail": 0, "temp file": 0, "superseded journal": 0}
    generations = set()
    for _ in range(KILLS + 10):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.procworkers", "appender", str(path), "65536", "3000"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = child.stdout.readline() if child.stdout else ""
        assert first.endswith("\n"), "the writer acknowledges a first write"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        output, errors = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, errors
        acknowledged.update(acknowledged_by(child, first + output))
        found = stored(path)  # the snapshot always parses; journal lines check out
        seen["torn tail"] += found.torn > 0
        seen["temp file"] += bool(temp_files(tmp_path))
        head = journal_of(path).read_bytes().split(b"\n", 1)[0]
        seen["superseded journal"] += json.loads(head.split(b" ", 1)[1])["generation"] != (
            found.generation
        )
        generations.add(found.generation)
        assert set(acknowledged) <= set(found.sessions), "an acknowledged write is missing"
        check_reopened(path, acknowledged)
        assert temp_files(tmp_path) == [], "strays of the killed writer are removed"
    assert len(acknowledged) >= 100 and len(generations) >= 5
    print(f"{len(acknowledged)} acknowledged writes; kills that left: {seen}")


@pytest.mark.parametrize("point", procworkers.CRASH_POINTS)
def test_a_writer_killed_at_each_step_of_a_commit(tmp_path: Path, point: str) -> None:
    """The child kills itself at one exact step of its fourth write: halfway through the
    journal append, between the append and its fdatasync, with the new snapshot written but
    not renamed, or between the snapshot's rename and the new journal's."""
    path = tmp_path / "sessions.json"
    child = subprocess.run(
        [sys.executable, "-m", "tests.procworkers", "crash", str(path), point],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    acknowledged = acknowledged_by(child, child.stdout)  # type: ignore[arg-type]
    assert len(acknowledged) == 3
    found = stored(path)
    head = json.loads(journal_of(path).read_bytes().split(b"\n", 1)[0].split(b" ", 1)[1])
    if point == "mid-append":
        assert found.torn > 0 and "s00000003" not in found.sessions
    if point == "before-fdatasync":  # written, though never acknowledged: it may stay
        assert found.torn == 0 and "s00000003" in found.sessions
    if point == "before-rename":
        assert len(temp_files(tmp_path)) == 1 and head["generation"] == found.generation
    if point == "between-renames":
        assert head["generation"] == found.generation - 1, "the old journal is superseded"
        assert "s00000003" in found.sessions
    check_reopened(path, acknowledged)
    store = procworkers.open_store(str(path))
    store.write([procworkers.upsert(4)], time.time())
    after = stored(path)
    assert after.torn == 0 and temp_files(tmp_path) == []
    assert set(acknowledged) | {"s00000004"} <= set(after.sessions)
