"""The core on the JSON file store: batching against write-through, validate speed, flush cost.

1. The standard workload (2,000 sessions, then 20,000 requests: 89% validate, 10% update,
   1% end and log in again) written behind (``write_behind=True``, ``save_delay_seconds=5``,
   ``batch_save_threshold=10``) and written through (``batch_save_threshold=1``,
   ``save_delay_seconds=0``): requests/s, store writes per request, p50/p99 latency. (The
   default mode, each change committed before its call returns: bench_commit.py.)
2. ``validate_session`` calls per second from one thread, on the memory and the file store,
   by wall clock and by CPU time (the process's CPU seconds: fair on a busy machine).
3. One flush of 10 changed sessions into files of 1,000, 10,000 and 100,000 sessions
   (median of 5), and the first flush after the file was opened (every record encoded).

Prints Markdown tables and checks the targets: store writes <= 1% of requests with the
defaults, validate >= 300,000/s on one core, a 100,000-session flush <= 250 ms.
Run: ``.venv/bin/python benchmarks/bench_core.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_backends import (  # noqa: E402
    CLIENT,
    MODES,
    Plan,
    make_plan,
    run_sync,
    upserts,
)
from benchmarks.compare_render import machine, machine_line  # noqa: E402
from pooled_sessions import SessionService  # noqa: E402
from pooled_sessions.adapters.file.store import JsonFileStore  # noqa: E402
from pooled_sessions.adapters.url import StoreURL  # noqa: E402
from pooled_sessions.codec import Upsert  # noqa: E402
from pooled_sessions.config import Settings  # noqa: E402

USERS, REQUESTS = 2_000, 20_000
VALIDATES = 200_000
FLUSH_SIZES = (1_000, 10_000, 100_000)
FLUSH_BATCH, FLUSH_REPEATS = 10, 5
TARGET_WRITES, TARGET_VALIDATES, TARGET_FLUSH = 0.01, 300_000.0, 0.250
PACED_RATE, PACED_REQUESTS = 2_000.0, 6_000


def workload(scratch: Path, users: int, requests: int) -> dict[str, dict[str, Any]]:
    """The standard workload on a fresh JSON file, once per mode."""
    plan = make_plan(users, requests)
    run_sync(str(scratch / "warm-up.json"), {}, plan[: requests // 10], users)
    results = {}
    for mode, settings in MODES.items():
        results[mode] = run_sync(str(scratch / f"{mode}.json"), settings, plan, users)
        print(f"  {mode:13} {results[mode]['requests_per_second']:>9,.0f} req/s", flush=True)
    paced = run_sync(
        str(scratch / "paced.json"),
        MODES["write-behind"],
        PacedPlan(plan[:PACED_REQUESTS], PACED_RATE),
        users,
    )
    results["write-behind"]["paced"] = paced["store_writes_per_request"]
    return results


class PacedPlan(list[tuple[int, int, int]]):
    """A plan handed out at ``rate`` requests per second (the wait is outside each timing)."""

    def __init__(self, plan: Plan, rate: float) -> None:
        super().__init__(plan)
        self.gap = 1.0 / rate

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        due = time.perf_counter()
        for request in super().__iter__():
            due += self.gap
            while time.perf_counter() < due:
                time.sleep(self.gap / 4)
            yield request


def validate_rate(url: str, users: int, calls: int, client: bool) -> dict[str, float]:
    """validate_session calls per second (wall clock and CPU time) from one thread, written
    behind (the default mode asks a file store for other processes' writes first:
    bench_commit.py)."""
    with SessionService(url, write_behind=True) as service:
        ids = [service.create_session(f"user{n}", {"cart": []}, CLIENT) for n in range(users)]
        service.force_save()
        rng = random.Random(3)
        order = [ids[rng.randrange(users)] for _ in range(calls)]
        info = CLIENT if client else None
        validate = service.validate_session
        best_wall = best_cpu = 0.0
        for _ in range(3):
            wall, cpu = time.perf_counter(), time.process_time()
            for sid in order:
                validate(sid, info)
            best_wall = max(best_wall, calls / (time.perf_counter() - wall))
            best_cpu = max(best_cpu, calls / (time.process_time() - cpu))
    return {"wall": best_wall, "cpu": best_cpu}


def validate_rates(scratch: Path, users: int, calls: int) -> dict[str, dict[str, float]]:
    """`validate_rate` on the memory and the file store, with and without client info."""
    rates = {}
    for store, url in (("memory", "memory://bench-core"), ("file", str(scratch / "v.json"))):
        for client in (False, True):
            key = f"{store}, {'with' if client else 'no'} client info"
            rates[key] = validate_rate(url, users, calls, client)
            print(f"  validate {key:28} {rates[key]['cpu']:>9,.0f}/s (CPU)", flush=True)
    return rates


def flush_times(scratch: Path, sizes: Sequence[int]) -> dict[int, dict[str, float]]:
    """Seconds to flush FLUSH_BATCH changed sessions into files of each size."""
    results = {}
    for size in sizes:
        path = str(scratch / f"flush-{size}.json")
        store = JsonFileStore(StoreURL.parse(path), Settings())
        now = time.time()
        for start in range(0, size, 20_000):
            store.write(upserts(start, min(20_000, size - start), now), now)
        batch = upserts(0, FLUSH_BATCH, now, created=False)
        steady = statistics.median(_timed(store, batch) for _ in range(FLUSH_REPEATS))
        first = _timed(JsonFileStore(StoreURL.parse(path), Settings()), batch)
        results[size] = {"steady": steady, "first": first, "bytes": os.path.getsize(path)}
        print(f"  flush {size:>7,} sessions: {steady * 1000:.1f} ms", flush=True)
    return results


def _timed(store: JsonFileStore, batch: list[Upsert]) -> float:
    started = time.perf_counter()
    store.write(batch, time.time())
    return time.perf_counter() - started


def workload_table(results: dict[str, dict[str, Any]], users: int, requests: int) -> list[str]:
    lines = [
        f"### Workload: {users:,} sessions, {requests:,} requests, JSON file store",
        "",
        "| mode | requests/s | store writes / request | sessions written / request "
        "| p50 µs | p99 µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, row in results.items():
        lines.append(
            f"| {mode} | {row['requests_per_second']:,.0f} | {row['store_writes_per_request']:.4f} "
            f"| {row['sessions_written_per_request']:.4f} | {row['p50_us']:,.1f} "
            f"| {row['p99_us']:,.1f} |"
        )
    behind, through = results["write-behind"], results["write-through"]
    speed = behind["requests_per_second"] / through["requests_per_second"]
    writes = through["store_writes_per_request"] / max(behind["store_writes_per_request"], 1e-9)
    lines += [
        "",
        f"Defaults against write-through: {speed:,.1f}x the requests per second, "
        f"{writes:,.0f}x fewer store writes "
        f"({1 - 1 / writes:.2%} of the writes saved).",
        "",
        f"With the defaults and requests paced at {PACED_RATE:,.0f}/s (the first "
        f"{PACED_REQUESTS:,} of the plan), so that every flush ends before the next "
        f"10 changes come: "
        f"{behind['paced']:.2%} store writes per request.",
        "",
    ]
    return lines


def rate_table(rates: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "### validate_session from one thread",
        "",
        "| store | calls/s (wall clock) | calls/s (CPU time) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {key} | {row['wall']:,.0f} | {row['cpu']:,.0f} |" for key, row in rates.items()]
    return lines + [""]


def flush_table(flushes: dict[int, dict[str, float]]) -> list[str]:
    lines = [
        f"### One flush of {FLUSH_BATCH} changed sessions into the file",
        "",
        "| sessions in the file | file size | flush (median of 5) | first flush after open |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for size, row in flushes.items():
        lines.append(
            f"| {size:,} | {row['bytes'] / 1e6:,.1f} MB | {row['steady'] * 1000:,.1f} ms "
            f"| {row['first'] * 1000:,.1f} ms |"
        )
    return lines + [""]


def targets(
    results: dict[str, dict[str, Any]],
    rates: dict[str, dict[str, float]],
    flushes: dict[int, dict[str, float]],
) -> list[str]:
    writes = results["write-behind"]["store_writes_per_request"]
    validate = rates["memory, no client info"]["cpu"]
    largest = max(flushes)
    flush = flushes[largest]["steady"]
    checks = [
        (
            f"store writes per request with the defaults <= {TARGET_WRITES:.0%}",
            f"{writes:.3%}",
            writes <= TARGET_WRITES,
        ),
        (
            f"validate_session on one core >= {TARGET_VALIDATES:,.0f}/s (CPU time, memory store)",
            f"{validate:,.0f}/s",
            validate >= TARGET_VALIDATES,
        ),
        (
            f"flush of a {largest:,}-session file <= {TARGET_FLUSH * 1000:.0f} ms",
            f"{flush * 1000:.1f} ms",
            flush <= TARGET_FLUSH,
        ),
    ]
    lines = ["### Targets", "", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in checks]
    return lines + [""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args(argv)
    users, requests = (500, 5_000) if args.quick else (USERS, REQUESTS)
    sizes = FLUSH_SIZES[:2] if args.quick else FLUSH_SIZES
    calls = VALIDATES // 10 if args.quick else VALIDATES
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        print("workload:", flush=True)
        results = workload(scratch, users, requests)
        print("validate:", flush=True)
        rates = validate_rates(scratch, users, calls)
        print("flush:", flush=True)
        flushes = flush_times(scratch, sizes)
    lines = [
        "## Core benchmark (`benchmarks/bench_core.py`)",
        "",
        f"Machine: {machine_line(machine(None))}.",
        "",
    ]
    lines += workload_table(results, users, requests) + rate_table(rates)
    lines += flush_table(flushes) + targets(results, rates, flushes)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
