"""Progress of ``inspect`` and ``cleanup --dry-run``: on stderr, for every store kind."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pooled_sessions.tools import cli, inspect, progress
from tests import storekit
from tests.storekit import sample

SESSIONS = 60
LINE = re.compile(r"^(inspecting|counting): ([\d,]+)( of [\d,]+ \(\d+%\))? sessions, ", re.M)


@pytest.fixture
def url_of(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str]:
    def make(kind: str) -> str:
        if kind == "memory":
            return storekit.memory_url()
        if kind == "file":
            return storekit.file_url(tmp_path, "src")
        if kind == "aiofile":
            return storekit.aiofile_url(tmp_path, "src")
        fixture = {"redis": "redis_server", "cluster": "redis_cluster"}[kind]
        return storekit.prefixed(request.getfixturevalue(fixture).url, "p")

    return make


@pytest.fixture
def often(monkeypatch: pytest.MonkeyPatch) -> None:
    """Report every ten sessions, a line each time: a small store shows it all."""
    monkeypatch.setattr(inspect, "TICK_EVERY", 10)
    monkeypatch.setattr(progress, "LINE_EVERY_SECONDS", 0.0)


@pytest.mark.usefixtures("often")
@pytest.mark.parametrize(
    "kind",
    [
        "memory",
        "file",
        "aiofile",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.cluster),
    ],
)
def test_inspect_shows_progress_on_stderr_as_it_reads(
    kind: str, url_of: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = url_of(kind)
    storekit.seed(url, sample(SESSIONS))
    assert cli.main(["inspect", url, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["live"] == SESSIONS  # stdout stays one JSON object
    counts = [int(found[1].replace(",", "")) for found in LINE.findall(err)]
    assert len(counts) >= 5 and counts == sorted(counts) and counts[-1] == SESSIONS, err
    known = kind not in ("file", "aiofile")  # a store counts at once; a file only by reading
    assert (f"of {SESSIONS} (100%)" in err) is known
    assert re.search(rf"\ninspecting: {SESSIONS} sessions in [\d.]+ s\n$", err), err


@pytest.mark.usefixtures("often")
def test_cleanup_dry_run_shows_progress_and_quiet_silences_it(
    url_of: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = url_of("file")
    storekit.seed(url, sample(SESSIONS))
    assert cli.main(["cleanup", url, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "would remove 0 expired sessions (60 live stay)" in out
    assert LINE.search(err) and "counting: 60 sessions in" in err
    for argv in (["cleanup", url, "--dry-run", "--quiet"], ["inspect", url, "--quiet"]):
        assert cli.main(argv) == 0
        assert capsys.readouterr().err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_inspect_on_a_terminal_draws_a_bar(
    url_of: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = url_of("memory")
    storekit.seed(url, sample(12))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["inspect", url]) == 0
    assert "sessions:   12 live" in capsys.readouterr().out
    shown = terminal.getvalue()
    assert "inspecting: 100%" in shown and "12/12" in shown and "\r" in shown
