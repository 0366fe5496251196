"""The ``pooled-sessions`` command: messages and exit codes, in-process and as a console script."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.codec import Operation, WriteResult
from pooled_sessions.tools import cli
from pooled_sessions.tools.progress import Bar, Lines, for_stream
from tests import storekit
from tests.filekit import journal_of, stored
from tests.storekit import make_record, sample, session_id

Captured = pytest.CaptureFixture[str]


def call(capsys: Captured, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A sessions file with 12 live sessions, 2 expired ones and 1 ended one."""
    url = storekit.file_url(tmp_path, "src")
    now = time.time()
    live = sample(13, now)
    storekit.seed(
        url,
        {
            **live,
            session_id(50): make_record(50, now, expires_at=now - 60.0),
            session_id(51): make_record(51, now, expires_at=now - 1.0),
        },
    )
    storekit.end(url, session_id(0), live[session_id(0)]["username"])
    return url


def test_migrate_reports_what_it_did(source: str, tmp_path: Path, capsys: Captured) -> None:
    target = storekit.file_url(tmp_path, "dst")
    code, out, err = call(capsys, "migrate", source, target, "--verify", "--batch-size", "5")
    assert (code, err) == (0, "")
    assert f"source:      {source}: 12 live sessions, 2 expired (skipped), 1 ended" in out
    assert f"destination: {target}: 0 sessions before" in out
    assert "copied:      12 sessions in " in out
    assert "verify:      OK: source 12 sessions, checksum " in out
    assert "copying: 12 of 12 (100%) sessions" in out  # plain progress lines: not a terminal
    assert storekit.count(target) == 12
    code, out, _ = call(capsys, "migrate", source, target, "--quiet")
    assert code == 0 and "12 sessions before" in out and "copying" not in out


def test_dry_run_writes_nothing(source: str, tmp_path: Path, capsys: Captured) -> None:
    target = storekit.file_url(tmp_path, "dst")
    code, out, _ = call(capsys, "migrate", source, target, "--dry-run", "--quiet")
    assert code == 0
    assert "dry run:     would copy 12 sessions; nothing was written" in out
    assert not Path(target).exists()


def test_verify_mismatch_exits_1(source: str, capsys: Captured) -> None:
    target = storekit.memory_url()
    storekit.seed(target, {session_id(3): make_record(3, time.time(), username="mallory")})
    code, out, _ = call(capsys, "migrate", source, target, "--verify", "--quiet", "--dry-run")
    assert code == 1
    assert "verify:      DIFFERENT" in out
    assert f"11 missing, 1 different: {session_id(1)[:8]}… missing" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["migrate", "{src}", "{src}"], "source and destination are the same store"),
        (["migrate", "{src}", "ftp://host/x"], "unknown store scheme 'ftp'"),
        (["inspect", "gopher://x"], "unknown store scheme 'gopher'"),
        (["migrate", "{src}", "redis://h/0?socket_timeout=-1"], "socket_timeout"),
    ],
)
def test_bad_usage_exits_2(argv: list[str], message: str, source: str, capsys: Captured) -> None:
    code, out, err = call(capsys, *(a.format(src=source) for a in argv))
    assert code == 2 and out == ""
    assert err.startswith("pooled-sessions: error: ") and message in err


def test_bad_option_exits_2_with_argparse_message(source: str, capsys: Captured) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["migrate", source, "memory://", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: must be 1 or more, got 0" in capsys.readouterr().err


def test_missing_source_exits_3(tmp_path: Path, capsys: Captured) -> None:
    missing = tmp_path / "nope.json"
    code, _, err = call(capsys, "migrate", str(missing), "memory://")
    assert code == 3
    assert err == f"pooled-sessions: error: source: no sessions file at {missing}\n"
    code, _, err = call(capsys, "cleanup", str(missing))
    assert code == 3 and "no sessions file" in err
    assert not missing.exists()


def test_unwritable_destination_exits_3(source: str, tmp_path: Path, capsys: Captured) -> None:
    code, _, err = call(capsys, "migrate", source, str(tmp_path / "no-dir" / "dst.json"))
    assert code == 3 and "destination: directory" in err and "does not exist" in err


def test_corrupt_source_exits_4_and_nothing_changes(
    source: str, tmp_path: Path, capsys: Captured
) -> None:
    target = storekit.file_url(tmp_path, "dst")
    storekit.seed(target, sample(2))
    path = Path(source)
    path.write_bytes(path.read_bytes().replace(b'"ip":', b'"ip" ', 1))
    before_source = path.read_bytes(), path.stat().st_mtime_ns
    before_target = Path(target).read_bytes(), Path(target).stat().st_mtime_ns
    code, out, err = call(capsys, "migrate", source, target, "--quiet")
    assert code == 4 and out == ""
    assert err.startswith(f"pooled-sessions: error: {source} is not a valid sessions file")
    assert "it was left as it is" in err
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before_source
    assert (Path(target).read_bytes(), Path(target).stat().st_mtime_ns) == before_target
    code, _, err = call(capsys, "inspect", source)
    assert code == 4 and "not a valid sessions file" in err


def test_corrupt_destination_exits_4_and_is_left_alone(
    source: str, tmp_path: Path, capsys: Captured
) -> None:
    target = tmp_path / "dst.json"
    target.write_text('{"format": "pooled_sessions", "version": 1, "sessions": {')
    before = target.read_bytes()
    code, _, err = call(capsys, "migrate", source, str(target))
    assert code == 4 and err.startswith("pooled-sessions: error: destination: ")
    assert target.read_bytes() == before


def test_interrupted_run_exits_130_and_resumes(
    source: str, tmp_path: Path, capsys: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = storekit.file_url(tmp_path, "dst")
    real_write = JsonFileStore.write
    calls = []

    def write(self: JsonFileStore, ops: Sequence[Operation], now: float) -> WriteResult:
        calls.append(len(ops))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(self, ops, now)

    monkeypatch.setattr(JsonFileStore, "write", write)
    code, _, err = call(capsys, "migrate", source, target, "--batch-size", "4", "--quiet")
    assert code == 130 and "interrupted; run the same command again to finish" in err
    assert storekit.count(target) == 4
    monkeypatch.setattr(JsonFileStore, "write", real_write)
    code, out, _ = call(capsys, "migrate", source, target, "--verify", "--quiet")
    assert code == 0 and "verify:      OK" in out and storekit.count(target) == 12


def test_inspect_counts_users_ages_and_bytes(source: str, capsys: Captured) -> None:
    code, out, _ = call(capsys, "inspect", source)
    assert code == 0
    assert "sessions:   12 live, 2 expired (not yet purged)" in out
    assert "users:      4" in out
    assert "file:       " in out and "1 tombstones" in out
    code, out, _ = call(capsys, "inspect", source, "--json")
    found = json.loads(out)
    assert found["live"] == 12 and found["expired"] == 2 and found["users"] == 4
    assert found["oldest"] < found["newest"] < time.time()
    on_disk = Path(source).stat().st_size + journal_of(source).stat().st_size
    assert 12 * 200 < found["bytes"] < found["file_bytes"] == on_disk


def test_inspect_of_an_empty_store(capsys: Captured) -> None:
    code, out, _ = call(capsys, "inspect", storekit.memory_url())
    assert code == 0 and "sessions:   0 live" in out and "oldest:     -" in out


def test_cleanup_removes_expired_sessions(source: str, capsys: Captured) -> None:
    code, out, _ = call(capsys, "cleanup", source, "--dry-run")
    assert code == 0 and "would remove 2 expired sessions (12 live stay)" in out
    assert stored(source).lines > 0
    code, out, _ = call(capsys, "cleanup", source)
    assert (code, out) == (
        0,
        f"{source}: removed 2 expired sessions; 12 remain\n"
        f"{source}: journal folded into a new snapshot\n",
    )
    assert stored(source).lines == 0 and len(stored(source).sessions) == 12
    records = storekit.load_all(source, [session_id(50), session_id(51), session_id(1)])
    assert records[session_id(50)] is None and records[session_id(51)] is None
    assert records[session_id(1)] is not None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    assert isinstance(for_stream(terminal), Bar)
    assert isinstance(for_stream(io.StringIO()), Lines)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert isinstance(for_stream(terminal), Lines)


def test_migrate_on_a_terminal_draws_a_bar(
    source: str, capsys: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert cli.main(["migrate", source, storekit.memory_url()]) == 0
    shown = terminal.getvalue()
    assert "copying: 100%" in shown and "12/12" in shown and "\r" in shown


def test_demo_still_runs(tmp_path: Path, capsys: Captured) -> None:
    code, out, _ = call(
        capsys, "demo", "--users", "3", "--requests", "30", "--path", str(tmp_path / "demo.json")
    )
    assert code == 0 and "requests served" in out


def test_console_script(source: str, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pooled-sessions")
    target = storekit.file_url(tmp_path, "dst")
    done = subprocess.run(
        [str(script), "migrate", source, target, "--verify"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "verify:      OK" in done.stdout and "copying: 12 of 12" in done.stdout
    Path(source).write_text("[]")
    failed = subprocess.run(
        [str(script), "inspect", source], capture_output=True, text=True, timeout=60, check=False
    )
    assert failed.returncode == 4 and "not a valid sessions file" in failed.stderr


@pytest.mark.redis
def test_unreachable_redis_exits_3(source: str, capsys: Captured) -> None:
    from tests.redis_servers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5&retries=0"
    code, out, err = call(capsys, "migrate", source, url, "--quiet")
    assert code == 3 and out == ""
    assert err.startswith("pooled-sessions: error: destination: redis ")
    assert "unavailable" in err and "Connection refused" in err
    code, _, err = call(capsys, "inspect", url)
    assert code == 3 and "unavailable" in err


@pytest.mark.redis
def test_redis_round_trip_inspect_and_cleanup(
    source: str, redis_url: str, tmp_path: Path, capsys: Captured
) -> None:
    code, out, _ = call(capsys, "migrate", source, redis_url, "--verify", "--quiet")
    assert code == 0 and "copied:      12 sessions" in out and "verify:      OK" in out
    now = time.time()
    short = {session_id(70 + n): make_record(70 + n, now, expires_at=now + 0.3) for n in range(3)}
    storekit.seed(redis_url, short)
    code, out, _ = call(capsys, "inspect", redis_url, "--json")
    assert code == 0 and json.loads(out)["live"] == 15
    time.sleep(0.5)  # Redis expires the hashes; their index entries stay until a cleanup
    code, out, _ = call(capsys, "cleanup", redis_url)
    assert (code, out) == (0, f"{redis_url}: removed 3 expired sessions; 12 remain\n")
    code, out, _ = call(capsys, "cleanup", redis_url)
    assert code == 0 and "removed 0 expired sessions; 12 remain" in out
    back = storekit.file_url(tmp_path, "back")
    code, out, _ = call(capsys, "migrate", redis_url, back, "--verify", "--quiet")
    assert code == 0 and "copied:      12 sessions" in out and "verify:      OK" in out


def test_missing_redis_package_exits_2_with_the_install_hint(
    source: str, capsys: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    code, _, err = call(capsys, "migrate", source, "redis://127.0.0.1:9/0")
    assert code == 2 and 'pip install "pooled-sessions[redis]"' in err
