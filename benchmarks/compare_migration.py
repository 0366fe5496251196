"""Migration throughput and peak memory, measured on ``pooled-sessions migrate`` processes.

Each run is a child process (``python -m pooled_sessions.tools.cli migrate ...``), so its peak
resident memory is its own (``os.wait4``); the copy rate is the one the command reports.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from pooled_sessions.codec import Record, encode_document, encode_record

COPIED = re.compile(r"copied:\s+([\d,]+) sessions in ([\d.]+) s \(([\d,]+) sessions/s")
BATCH = 2000


class StoreURLs(Protocol):
    def url(self, name: str) -> str: ...


def write_sessions_file(path: Path, count: int) -> None:
    """A sessions file of ``count`` live sessions, written without holding them all."""
    now = time.time()

    def fragments() -> Any:
        for n in range(count):
            record: Record = {
                "username": f"user{n % 50_000}",
                "attributes": {"cart": [n, n + 1], "role": "member", "theme": "dark"},
                "ip": "203.0.113.7",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
                "created_at": now - 100.0,
                "last_accessed_at": now - 10.0,
                "expires_at": now + 7200.0,
                "absolute_expires_at": None,
            }
            yield f"bench{n:09d}", encode_record(record)

    path.write_text(encode_document(fragments(), {}))


CHILD = (  # VmHWM: this process's own peak (ru_maxrss would count the parent's pages at fork)
    "import re, sys\n"
    "from pooled_sessions.tools.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print('peak_rss_kb=' + re.search(r'VmHWM:\\s*(\\d+)', status)[1], file=sys.stderr)\n"
    "sys.exit(code)\n"
)
PEAK = re.compile(r"peak_rss_kb=(\d+)")


def run_cli(*args: str) -> dict[str, Any]:
    """One ``pooled-sessions`` process: its copy rate, wall time and peak RSS."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pooled-sessions {' '.join(args)} failed: {done.stderr or done.stdout}")
    result: dict[str, Any] = {"wall_seconds": wall}
    copied = COPIED.search(done.stdout)
    if copied:
        result.update(
            copy_seconds=float(copied[2]), sessions_per_second=int(copied[3].replace(",", ""))
        )
    peak = PEAK.search(done.stderr)
    result["peak_rss_mb"] = int(peak[1]) / 1024.0 if peak else None
    return result


def migration_runs(stores: StoreURLs, scratch: Path, quick: bool) -> dict[str, Any]:
    """file -> Redis, file -> Cluster and Redis -> file at one size; then file -> Redis at
    ten times that size, to show memory does not grow with the source."""
    size = 10_000 if quick else 100_000
    source = scratch / "migrate-source.json"
    write_sessions_file(source, size)
    redis_url, cluster_url = stores.url("redis"), stores.url("cluster")
    runs: dict[str, Any] = {}
    pairs = {
        "file -> redis": (str(source), redis_url),
        "file -> cluster": (str(source), cluster_url),
        "redis -> file": (redis_url, str(scratch / "from-redis.json")),
    }
    for label, (src, dst) in pairs.items():
        runs[label] = {
            "sessions": size,
            **run_cli("migrate", src, dst, "--quiet", "--batch-size", str(BATCH)),
        }
        _say(label, runs[label])
    big = scratch / "migrate-big.json"
    write_sessions_file(big, size * 10)
    source.unlink()
    label = "file -> redis (10x)"
    runs[label] = {
        "sessions": size * 10,
        **run_cli("migrate", str(big), stores.url("redis"), "--quiet", "--batch-size", str(BATCH)),
    }
    _say(label, runs[label])
    big.unlink()
    return runs


def _say(label: str, run: dict[str, Any]) -> None:
    print(
        f"  migrate  {label:20} {run.get('sessions_per_second', 0):>9,} sessions/s, "
        f"peak RSS {run['peak_rss_mb']:.0f} MB",
        flush=True,
    )
