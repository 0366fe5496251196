"""AsyncSessionService: event-loop lag while a large sessions file is flushed, and requests
per second on the standard workload next to the sync service. Prints Markdown tables.

Lag: a ticker task sleeps 1 ms in a loop; its worst overshoot is the longest time the loop
was held. The file holds 100,000 sessions; 1,000 of them change, then one flush runs: the
first after opening the file (each record's JSON text not yet cached), the next one (the
steady state of a running server), one after another process replaced the file (a reload
first), and, for reference, the sync service's `async_force_save` (its flush in a worker
thread) in the same two cases. The longest garbage-collector pause is measured apart
(``gc.callbacks``): it stops every thread, whatever the code around it does.

Garbage collection with 50,000 live sessions (``--gc-only`` runs this part alone): one
service holds them (created through it, so the engine and the store both keep them), then
a flush during which a full collection runs (``gc.collect()`` on the loop, as any library
or a natural collection may start one), then rounds of 1,000 changes and a flush, with
only the collections CPython starts itself. Each case runs without and with the service
freezing its long-lived objects (`pooled_sessions.service_gc`), alternately.

Workload: 2,000 sessions, then 20,000 requests (89% validate, 10% update, 1% end and log
in again), from one task, and spread over 100 concurrent tasks.

Run: ``.venv/bin/python benchmarks/bench_async.py [--sessions N] [--quick] [--gc-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_backends import (  # noqa: E402
    CLIENT,
    Plan,
    make_plan,
    run_async,
    run_sync,
    serve_async,
    summary,
)
from pooled_sessions import AsyncSessionService, SessionService, service_gc  # noqa: E402
from pooled_sessions.adapters.file.store import JsonFileStore  # noqa: E402
from pooled_sessions.adapters.url import StoreURL  # noqa: E402
from pooled_sessions.config import Settings  # noqa: E402
from pooled_sessions.tools.migrate import upsert_of  # noqa: E402

TICK = 0.001
TASKS = 100
BEHIND: dict[str, Any] = {"write_behind": True}  # the mode these tables were measured in
QUIET: dict[str, Any] = {  # flushed on demand only
    "write_behind": True,
    "save_delay_seconds": 3600,
    "batch_save_threshold": 10**9,
}


def seed_file(path: Path, count: int) -> list[str]:
    """A sessions file of ``count`` sessions written by the sync store; returns their ids."""
    now = time.time()
    ids = [f"bench{n:09d}" for n in range(count)]
    upserts = [
        upsert_of(
            sid,
            {
                "username": f"user{n}",
                "attributes": {"cart": [n % 97, 1], "role": "member"},
                "ip": CLIENT["ip"],
                "user_agent": CLIENT["user_agent"],
                "created_at": now,
                "last_accessed_at": now,
                "expires_at": now + 3600.0,
                "absolute_expires_at": None,
            },
        )
        for n, sid in enumerate(ids)
    ]
    JsonFileStore(StoreURL.parse(str(path)), Settings()).write(upserts, now)
    return ids


class GCPauses:
    """The longest collection (wall and thread CPU time), and the full ones, while active
    (``gc.callbacks``). CPU time leaves out the time other jobs of the machine took."""

    def __init__(self) -> None:
        self.longest = self.longest_cpu = 0.0
        self.full = 0
        self._started = self._started_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started, self._started_cpu = time.perf_counter(), time.thread_time()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)
            self.longest_cpu = max(self.longest_cpu, time.thread_time() - self._started_cpu)
            self.full += info["generation"] == 2


async def lag_during(action: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    """Run ``action`` while a ticker measures how late the loop wakes it."""
    delays: list[float] = []
    held: list[float] = []  # the loop thread's CPU time in each tick: lag without preemption
    running = True
    pauses = GCPauses()

    async def ticker() -> None:
        while running:
            begun, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK)
            delays.append(time.perf_counter() - begun - TICK)
            held.append(time.thread_time() - cpu)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    delays.clear()
    held.clear()
    gc.callbacks.append(pauses)
    started = time.perf_counter()
    try:
        await action()
    finally:
        seconds = time.perf_counter() - started
        gc.callbacks.remove(pauses)
    running = False
    await task
    ordered = sorted(delays)
    return {
        "worst_ms": ordered[-1] * 1000,
        "p99_ms": ordered[len(ordered) * 99 // 100] * 1000,
        "held_ms": max(held) * 1000,
        "held_p99_ms": sorted(held)[len(held) * 99 // 100] * 1000,
        "gc_ms": pauses.longest * 1000,
        "gc_cpu_ms": pauses.longest_cpu * 1000,
        "full_gcs": pauses.full,
        "flush_ms": seconds * 1000,
    }


async def lag_rows(
    scratch: Path, sessions: int, changed: int
) -> list[tuple[str, dict[str, float]]]:
    path = scratch / "large.json"
    ids = seed_file(path, sessions)
    step = sessions // changed
    rows = [
        (
            "idle loop, nothing flushed (this machine's noise floor)",
            await lag_during(lambda: asyncio.sleep(1.0)),
        )
    ]
    async with AsyncSessionService(f"aiofile://{path}", **QUIET) as svc:
        for label in (
            "first flush after opening the file",
            "steady state: the next flush",
            "after another process replaced the file (reload first)",
        ):
            for n in range(changed):
                await svc.update_session(ids[n * step], {"cart": [n, len(rows)]})
            if len(rows) == 3:
                replace_elsewhere(path)
            rows.append(
                (f"AsyncSessionService, aiofile://: {label}", await lag_during(svc.force_save))
            )
    with SessionService(path, **QUIET) as sync:
        for label in ("", "steady state", "after another process replaced the file"):
            for n in range(changed):
                sync.update_session(ids[n * step], {"cart": [n, len(rows)]})
            if not label:
                await sync.async_force_save()  # the first flush fills the cache of record texts
                continue
            if label.startswith("after"):
                replace_elsewhere(path)
            rows.append(
                (
                    f"SessionService.async_force_save (worker thread), file://: {label}",
                    await lag_during(sync.async_force_save),
                )
            )
    return rows


def replace_elsewhere(path: Path) -> None:
    """What another process's flush does to the file: a new version replaces it."""
    JsonFileStore(StoreURL.parse(str(path)), Settings()).write([], time.time())


GCCase = dict[str, dict[str, float]]


async def gc_case(path: Path, sessions: int, changed: int, rounds: int) -> GCCase:
    """A service holding ``sessions`` live sessions: a flush with a full collection forced
    into it, then ``rounds`` of ``changed`` updates and a flush."""
    async with AsyncSessionService(f"aiofile://{path}", **QUIET) as svc:
        attributes = {"cart": [1, 2], "role": "member"}
        ids = [await svc.create_session(f"user{n}", attributes, CLIENT) for n in range(sessions)]
        await svc.force_save()
        step = sessions // changed

        async def change(round_: int) -> None:
            for n in range(changed):
                await svc.update_session(ids[n * step + round_ % step], {"cart": [n, round_]})
                await asyncio.sleep(0)  # a request's other awaits: the ticker runs between

        async def forced() -> None:
            flush = asyncio.ensure_future(svc.force_save())
            await asyncio.sleep(0)  # the flush has begun
            gc.collect()
            await flush

        async def natural() -> None:
            for round_ in range(1, rounds + 1):
                await change(round_)
                await svc.force_save()

        await change(0)
        return {
            "idle": await lag_during(lambda: asyncio.sleep(1.0)),
            "forced": await lag_during(forced),
            "natural": await lag_during(natural),
        }


async def gc_rows(scratch: Path, sessions: int, rounds: int, repeats: int) -> dict[str, GCCase]:
    """`gc_case` without and with the service's freezing, alternately; the median of each
    figure over ``repeats`` (the worst lag: also its maximum, as ``worst_max_ms``)."""
    runs: dict[str, list[GCCase]] = {"without": [], "with": []}
    first = service_gc.FREEZE_FROM
    for n in range(repeats):
        for label in ("without", "with") if n % 2 == 0 else ("with", "without"):
            service_gc.FREEZE_FROM = first if label == "with" else sys.maxsize
            gc.unfreeze()
            gc.collect()
            path = scratch / f"gc{n}{label}.json"
            runs[label].append(await gc_case(path, sessions, 1_000, rounds))
            path.unlink()
    service_gc.FREEZE_FROM = first
    gc.unfreeze()
    return {label: _medians(cases) for label, cases in runs.items()}


def _medians(cases: list[GCCase]) -> GCCase:
    merged: GCCase = {}
    for part in cases[0]:
        merged[part] = {k: statistics.median(c[part][k] for c in cases) for k in cases[0][part]}
        merged[part]["worst_max_ms"] = max(c[part]["worst_ms"] for c in cases)
    return merged


def print_gc(rows: dict[str, GCCase], sessions: int, rounds: int, repeats: int) -> None:
    print(
        f"\n### Event-loop lag with {sessions:,} live sessions (aiofile://), without and with "
        f"the service's gc.freeze; median of {repeats} runs (worst: also the maximum)\n"
    )
    print(
        "| case | freeze | worst lag (max) | p99 lag | loop held, CPU: worst / p99 "
        "| longest GC pause (CPU) | full GCs |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    titles = {
        "idle": "idle loop, the sessions held (this machine's noise floor)",
        "forced": "a flush of 1,000 changes, a full collection forced into it",
        "natural": f"{rounds} rounds of 1,000 changes and a flush, CPython's own collections",
    }
    for part, title in titles.items():
        for label in ("without", "with"):
            lag = rows[label][part]
            print(
                f"| {title} | {label} | {lag['worst_ms']:.1f} ms ({lag['worst_max_ms']:.1f} ms) "
                f"| {lag['p99_ms']:.1f} ms | {lag['held_ms']:.1f} / {lag['held_p99_ms']:.1f} ms "
                f"| {lag['gc_ms']:.1f} ms ({lag['gc_cpu_ms']:.1f} ms) "
                f"| {lag['full_gcs']:.0f} |"
            )


async def run_concurrent(url: str, plan: Plan, users: int, tasks: int) -> dict[str, Any]:
    """The workload spread over ``tasks`` concurrent tasks (one user's requests each)."""
    async with AsyncSessionService(url, write_behind=True) as svc:
        ids = [await svc.create_session(f"user{n}", {"cart": []}, CLIENT) for n in range(users)]
        await svc.force_save()
        before, latencies = await svc.stats(), []
        queue = iter(plan)

        async def worker() -> None:
            for request in queue:
                begun = time.perf_counter_ns()
                await serve_async(svc, ids, request)
                latencies.append(time.perf_counter_ns() - begun)
                await asyncio.sleep(0)  # a handler's other awaits: let the others run

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        await svc.force_save()
        seconds, after = time.perf_counter() - started, await svc.stats()
    return summary(
        latencies,
        seconds,
        after["store_writes"] - before["store_writes"],
        after["sessions_written"] - before["sessions_written"],
    )


def throughput_rows(
    scratch: Path, users: int, requests: int, repeats: int
) -> list[tuple[str, str, dict[str, Any]]]:
    plan = make_plan(users, requests)
    runs: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
        ("SessionService", "", lambda url: run_sync(url, BEHIND, plan, users)),
        (
            "AsyncSessionService, 1 task",
            "async",
            lambda url: asyncio.run(run_async(url, BEHIND, plan, users)),
        ),
        (
            f"AsyncSessionService, {TASKS} tasks",
            "async",
            lambda url: asyncio.run(run_concurrent(url, plan, users, TASKS)),
        ),
    ]
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for store in ("memory", "file"):
        for label, kind, run in runs:
            results = []
            for n in range(repeats):
                if store == "memory":
                    url = f"memory://bench{n}{label}"
                else:
                    path = scratch / f"w{n}{len(rows)}.json"
                    url = f"aiofile://{path}" if kind else str(path)
                results.append(run(url))
            best = max(results, key=lambda r: r["requests_per_second"])
            scheme = "memory://" if store == "memory" else "aiofile://" if kind else "file://"
            rows.append((label, scheme, best))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gc-sessions", type=int, default=50_000)
    parser.add_argument("--gc-rounds", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    parser.add_argument("--gc-only", action="store_true", help="only the collector's cases")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.requests, args.repeats = 20_000, 5_000, 1
        args.gc_sessions, args.gc_rounds = 20_000, 10
    with tempfile.TemporaryDirectory() as scratch:
        gc_repeats = max(args.repeats, 2)
        gcs = asyncio.run(gc_rows(Path(scratch), args.gc_sessions, args.gc_rounds, gc_repeats))
        if args.gc_only:
            print_gc(gcs, args.gc_sessions, args.gc_rounds, gc_repeats)
            return 0
        lags = asyncio.run(lag_rows(Path(scratch), args.sessions, args.changed))
        rates = throughput_rows(Path(scratch), args.users, args.requests, args.repeats)
    print(
        f"\n### Event-loop lag while a {args.sessions:,}-session file is flushed "
        f"({args.changed:,} sessions changed; ticker every {TICK * 1000:g} ms)\n"
    )
    print("| flush | worst lag | p99 lag | longest GC pause | flush time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, lag in lags:
        print(
            f"| {label} | {lag['worst_ms']:.1f} ms | {lag['p99_ms']:.1f} ms "
            f"| {lag['gc_ms']:.1f} ms | {lag['flush_ms']:.0f} ms |"
        )
    print_gc(gcs, args.gc_sessions, args.gc_rounds, gc_repeats)
    print(
        f"\n### Standard workload: {args.users:,} sessions, {args.requests:,} requests "
        f"(89% validate, 10% update, 1% end), best of {args.repeats}\n"
    )
    print("| service | store | requests/s | p50 | p99 | store writes |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, scheme, rate in rates:
        print(
            f"| {label} | {scheme} | {rate['requests_per_second']:,.0f} "
            f"| {rate['p50_us']:.1f} µs | {rate['p99_us']:.1f} µs "
            f"| {rate['store_writes_per_request'] * args.requests:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
