"""``migrate --verify``: the check against the copy it checks, side by side, per store pair.

For each pair a source of N sessions is copied (``migrate``) into a fresh target, then
the copy is verified (``verify``) in the same process, ``--repeat`` times; the median
rates and the median of the runs' verify/copy ratios are printed (each ratio compares two
passes run back to back, so it holds up on a busy machine better than the rates do). Redis runs on a
redis-server (and a 3-master cluster with ``--cluster``) this script starts on free ports.

Run: ``.venv/bin/python benchmarks/bench_verify.py [--sessions N] [--repeat N] [--cluster]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_migration import write_sessions_file  # noqa: E402
from pooled_sessions.config import Settings  # noqa: E402
from pooled_sessions.tools.migrate import DEFAULT_BATCH_SIZE, migrate  # noqa: E402
from pooled_sessions.tools.stores import open_source, open_target  # noqa: E402
from pooled_sessions.tools.verify import verify  # noqa: E402
from tests.redis_servers import RedisCluster, RedisServer  # noqa: E402

SETTINGS = Settings()


def copy_and_verify(source_url: str, target_url: str) -> dict[str, float]:
    """Seconds to copy ``source_url`` into ``target_url``, then to verify the copy."""
    source = open_source(source_url, SETTINGS)
    target = open_target(target_url, SETTINGS)
    try:
        report = migrate(source, target, batch_size=DEFAULT_BATCH_SIZE)
        started = time.perf_counter()
        check = verify(source, target, DEFAULT_BATCH_SIZE, set(), time.time, lambda _: None)
        seconds = time.perf_counter() - started
    finally:
        target.close()
        source.close()
    if not check.ok or check.source_count != report.copied:
        raise RuntimeError(f"{source_url} -> {target_url}: the copy did not verify: {check}")
    return {"sessions": report.copied, "copy": report.seconds, "verify": seconds}


def run(sessions: int, repeat: int, cluster: bool) -> list[tuple[str, dict[str, float]]]:
    """Every pair, on fresh stores under one scratch directory."""
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis = RedisServer(scratch / "redis").start()
        stack.callback(redis.stop)
        servers = {"redis": redis.url}
        if cluster:
            nodes = RedisCluster(scratch / "cluster").start()
            stack.callback(nodes.stop)
            servers["cluster"] = nodes.url

        def url(kind: str) -> str:
            tag = uuid.uuid4().hex[:10]
            if kind == "file":
                return str(scratch / f"{tag}.json")
            return f"{servers[kind]}?prefix=b{tag}"

        source_file = scratch / "source.json"
        write_sessions_file(source_file, sessions)
        redis_source = url("redis")
        copy_and_verify(str(source_file), redis_source)
        pairs = [("file", str(source_file), "file"), ("file", str(source_file), "redis")]
        pairs += [("file", str(source_file), "cluster")] if cluster else []
        pairs.append(("redis", redis_source, "file"))
        results = []
        for source_kind, source_url, target_kind in pairs:
            label = f"{source_kind} -> {target_kind}"
            runs = [copy_and_verify(source_url, url(target_kind)) for _ in range(repeat)]
            results.append((label, _median(runs)))
            _say(label, results[-1][1])
        return results


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median rates of several runs, and the median of their verify/copy ratios."""
    return {
        "sessions": runs[0]["sessions"],
        "copy_per_second": statistics.median(r["sessions"] / r["copy"] for r in runs),
        "verify_per_second": statistics.median(r["sessions"] / r["verify"] for r in runs),
        "ratio": statistics.median(r["copy"] / r["verify"] for r in runs),
    }


def _say(label: str, run: dict[str, Any]) -> None:
    print(
        f"{label:18} {run['sessions']:>9,.0f} sessions   copy {run['copy_per_second']:>9,.0f}/s"
        f"   verify {run['verify_per_second']:>9,.0f}/s   verify/copy {run['ratio']:5.2f}x",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=50_000, help="sessions per source")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pair (median kept)")
    parser.add_argument("--cluster", action="store_true", help="add file -> Redis Cluster")
    args = parser.parse_args(argv)
    run(args.sessions, args.repeat, args.cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
