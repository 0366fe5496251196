"""Write the blocking Redis store from its asyncio source, or check that it is up to date.

    python scripts/unasync.py            # rewrite every generated file
    python scripts/unasync.py --check    # exit 1, naming each stale file, if any differs

The asyncio file is the source of truth. Its blocking twin is the same text with the
`SUBSTITUTIONS` applied, its imports sorted and run through ``ruff format`` (when ruff is
installed). Where the two
must differ, the source says so in a branch this script understands:

    if True:  # unasync: why the two differ
        ...asyncio code, left out of the blocking file...
    else:
        ...blocking code, kept one level less indented (mypy skips it in the source)...

The ``else:`` is optional. A comment line starting ``# unasync:`` is left out too.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

DESCRIPTION = "Write the blocking Redis store from its asyncio source, or check it."
ROOT = Path(__file__).resolve().parent.parent
FILES = {"pooled_sessions/adapters/redis/store_async.py": "pooled_sessions/adapters/redis/store.py"}
HEADER = "# generated from {source} by scripts/unasync.py; do not edit\n"
BRANCH = re.compile(r"( *)if True:  # unasync: ")
INDENT = " " * 4
SUBSTITUTIONS = [
    (r"^import asyncio\n", ""),
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bAsyncRedisStore\b", "RedisStore"),
    (r"\bAsyncEventListener\b", "EventListener"),
    (r"\bAsyncCatchUp\b", "CatchUp"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bredis\.asyncio\b", "redis"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\baclose\b", "close"),
    # an async generator cannot `yield from`; the blocking one does
    (r"^( *)for (\w+) in (.+):\n +yield \2\n", r"\1yield from \3\n"),
]


def _body_end(lines: list[str], start: int, indent: str) -> int:
    """Where the block starting at ``start`` (more indented than ``indent``) ends."""
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent + " ")):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _unbranch(lines: list[str]) -> list[str]:
    """The lines without ``# unasync:`` comments and asyncio branches, blocking ones kept."""
    kept: list[str] = []
    at = 0
    while at < len(lines):
        branch = BRANCH.match(lines[at])
        if branch is None:
            if not lines[at].lstrip().startswith("# unasync:"):
                kept.append(lines[at])
            at += 1
            continue
        indent = branch.group(1)
        at = _body_end(lines, at + 1, indent)
        if at < len(lines) and lines[at] == f"{indent}else:\n":
            end = _body_end(lines, at + 1, indent)
            kept += [line.removeprefix(INDENT) for line in lines[at + 1 : end]]
            at = end
    return kept


def _format(text: str, target: str) -> str:
    """``text`` with its imports sorted and through ``ruff format``, with the project's
    settings, if ruff is installed."""
    if importlib.util.find_spec("ruff") is not None:
        ruff = [sys.executable, "-m", "ruff"]
    elif (found := shutil.which("ruff")) is not None:
        ruff = [found]
    else:
        print("unasync: ruff not found; output left unformatted", file=sys.stderr)
        return text
    config = ["--config", str(ROOT / "pyproject.toml"), "--stdin-filename", target]
    for step in (["check", "--select", "I", "--fix", "--quiet", "--exit-zero"], ["format"]):
        # import order first: a renamed name (AsyncIterator -> Iterator) may sort elsewhere
        done = subprocess.run(
            [*ruff, *step, *config, "-"], input=text, capture_output=True, text=True, check=True
        )
        text = done.stdout
    return text


def generate(source: str, text: str, target: str) -> str:
    """The blocking twin of the asyncio module ``text``."""
    text = "".join(_unbranch(text.splitlines(keepends=True)))
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    return _format(HEADER.format(source=Path(source).name) + text, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree (default: this one)")
    args = parser.parse_args(argv)
    stale = []
    for source, target in FILES.items():
        wanted = generate(source, (args.root / source).read_text(), target)
        path = args.root / target
        if path.exists() and path.read_text() == wanted:
            continue
        if args.check:
            stale.append(target)
        else:
            path.write_text(wanted)
            print(f"unasync: wrote {target}")
    for target in stale:
        print(f"unasync: {target} is stale; run python scripts/unasync.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
