"""The source distribution carries the package and what its tests and docs need."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import pooled_sessions

ROOT = Path(__file__).resolve().parent.parent
LEFT_OUT = (".git", ".venv", ".ci", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
SKIPPED = ("build", "dist", "htmlcov", ".coverage", "sessions.json*", "*.py[cod]")


def _wanted() -> set[str]:
    """Every file the sdist must hold, as paths relative to its top folder."""
    top = {"pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "Makefile"}
    top |= {path.name for path in ROOT.glob("*.md")}  # CHANGELOG.md, when there is one
    trees = ("pooled_sessions", "tests", "docs", "benchmarks", "examples")
    files = {
        str(path.relative_to(ROOT))
        for tree in trees
        for path in (ROOT / tree).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    return top | files


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist built from a copy of the tree (the tree itself is left as it is)."""
    pytest.importorskip("build")
    tree = tmp_path_factory.mktemp("sdist") / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*LEFT_OUT, *SKIPPED))
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", "dist", "."],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = (tree / "dist").glob("*.tar.gz")
    return sdist


def test_sdist_holds_the_package_its_tests_and_docs(sdist: Path) -> None:
    assert sdist.name == f"pooled_sessions-{pooled_sessions.__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    missing = _wanted() - names
    assert not missing, f"not in the sdist: {sorted(missing)}"
    for required in ("tests/conftest.py", "tests/redis_servers.py", "docs/cli.md"):
        assert required in names
    strays = [n for n in names if "__pycache__" in n or n.endswith(".pyc") or ".venv" in n]
    assert not strays, strays


def test_sdist_tests_are_collected_from_the_sdist_alone(sdist: Path, tmp_path: Path) -> None:
    """Every test module, its conftest and helpers import from the unpacked sdist."""
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (top,) = (tmp_path / "unpacked").iterdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=top,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error" not in done.stdout.lower().splitlines()[-1], done.stdout[-500:]
