"""scripts/unasync.py: the blocking Redis store is written from the asyncio one and kept so."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "unasync.py"
SOURCE = "pooled_sessions/adapters/redis/store_async.py"
TARGET = "pooled_sessions/adapters/redis/store.py"


def unasync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_store_is_up_to_date() -> None:
    done = unasync("--check")
    assert done.returncode == 0, done.stderr


def test_the_check_names_a_stale_file(tmp_path: Path) -> None:
    (tmp_path / SOURCE).parent.mkdir(parents=True)
    shutil.copy(ROOT / SOURCE, tmp_path / SOURCE)
    assert unasync("--check", "--root", str(tmp_path)).returncode == 1  # not written yet
    assert unasync("--root", str(tmp_path)).returncode == 0
    assert (tmp_path / TARGET).read_text() == (ROOT / TARGET).read_text()
    assert unasync("--check", "--root", str(tmp_path)).returncode == 0
    with (tmp_path / TARGET).open("a") as generated:
        generated.write("# edited by hand\n")
    done = unasync("--check", "--root", str(tmp_path))
    assert done.returncode == 1 and TARGET in done.stderr


def test_an_edited_source_makes_the_generated_file_stale(tmp_path: Path) -> None:
    (tmp_path / SOURCE).parent.mkdir(parents=True)
    shutil.copy(ROOT / SOURCE, tmp_path / SOURCE)
    shutil.copy(ROOT / TARGET, tmp_path / TARGET)
    assert unasync("--check", "--root", str(tmp_path)).returncode == 0
    source = (tmp_path / SOURCE).read_text().replace("Always False", "Never True")
    (tmp_path / SOURCE).write_text(source)
    done = unasync("--check", "--root", str(tmp_path))
    assert done.returncode == 1 and TARGET in done.stderr


def test_branches_keep_the_blocking_side_and_names_lose_async() -> None:
    source = (
        "# unasync: a note for the source alone\n"
        "import asyncio\n"
        "\n"
        "\n"
        "async def f(x: AsyncIterator[int]) -> None:\n"
        "    if True:  # unasync: they differ\n"
        "        await asyncio.sleep(1)\n"
        "    else:\n"
        "        print(1)\n"
        "    if True:  # unasync: asyncio only\n"
        "        await x.aclose()\n"
        "    async with lock:\n"
        "        async for item in x:\n"
        "            yield item\n"
    )
    generated = script().generate("source_async.py", source, "source.py")
    assert generated == (
        "# generated from source_async.py by scripts/unasync.py; do not edit\n"
        "\n"
        "\n"
        "def f(x: Iterator[int]) -> None:\n"
        "    print(1)\n"
        "    with lock:\n"
        "        yield from x\n"
    )
