"""Every store on the same workload, written behind and written through; flush cost, memory,
and migration throughput. Writes benchmarks/results/compare.{json,md,png}.

Stores: memory, JSON file, aiofiles file, Redis and a 3-master Redis Cluster (this script
starts redis-server processes on free ports and stops them). Run ``make bench-compare``,
or ``.venv/bin/python benchmarks/compare_backends.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compare_render  # noqa: E402
from benchmarks.compare_migration import migration_runs  # noqa: E402
from pooled_sessions import SessionService  # noqa: E402
from pooled_sessions.adapters.protocol import Store  # noqa: E402
from pooled_sessions.codec import Upsert, encode_attributes  # noqa: E402
from pooled_sessions.config import Settings  # noqa: E402
from pooled_sessions.tools.stores import open_target  # noqa: E402
from tests.redis_servers import RedisCluster, RedisServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
USERS, REQUESTS = 2_000, 20_000
VALIDATE, UPDATE, END = 0, 1, 2
MODES: dict[str, dict[str, Any]] = {  # commit on return (the default): bench_commit.py
    "write-behind": {"write_behind": True},
    "write-through": {"write_behind": True, "batch_save_threshold": 1, "save_delay_seconds": 0},
}
CLIENT = {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}
FLUSH_SIZES = (1_000, 10_000, 100_000)
FLUSH_BATCH = 10
REPEAT_BUDGET = 5.0
Plan = list[tuple[int, int, int]]


class Stores:
    """A fresh URL of each store per call; Redis servers started on free ports."""

    def __init__(self, stack: ExitStack, scratch: Path, cluster: bool = True) -> None:
        self.scratch = scratch
        self.redis = stack.enter_context(_running(RedisServer(scratch / "redis")))
        if cluster:
            self.cluster = stack.enter_context(_running(RedisCluster(scratch / "cluster")))

    def url(self, name: str) -> str:
        tag = uuid.uuid4().hex[:10]
        if name == "cluster":
            return f"{self.cluster.url}?prefix=b{tag}"
        return {
            "memory": f"memory://b{tag}",
            "file": str(self.scratch / f"{tag}.json"),
            "aiofile": f"aiofile://{self.scratch / f'{tag}.json'}",
            "redis": f"{self.redis.url}?prefix=b{tag}",
        }[name]

    def servers(self, name: str) -> list[RedisServer]:
        if name == "redis":
            return [self.redis]
        return list(self.cluster.nodes) if name == "cluster" else []


class _running:
    """Start a server (or cluster) on entry and stop it on exit."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def __enter__(self) -> Any:
        return self.server.start()

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


STORE_NAMES = ["memory", "file", "aiofile", "redis", "cluster"]


def make_plan(users: int, requests: int, seed: int = 7) -> Plan:
    """The standard request mix: 89% validate, 10% update, 1% end (then log in again)."""
    rng = random.Random(seed)
    plan: Plan = []
    for _ in range(requests):
        roll = rng.random()
        kind = VALIDATE if roll < 0.89 else UPDATE if roll < 0.99 else END
        plan.append((kind, rng.randrange(users), rng.randrange(100)))
    return plan


def summary(latencies_ns: list[int], seconds: float, writes: int, written: int) -> dict[str, Any]:
    ordered = sorted(latencies_ns)
    count = len(ordered)
    return {
        "requests_per_second": count / seconds,
        "p50_us": ordered[count // 2] / 1000.0,
        "p99_us": ordered[min(count - 1, count * 99 // 100)] / 1000.0,
        "store_writes_per_request": writes / count,
        "sessions_written_per_request": written / count,
        "seconds": seconds,
    }


def serve(service: SessionService, ids: list[str], request: tuple[int, int, int]) -> None:
    """One request of a plan on a SessionService (an end logs the user in again)."""
    kind, slot, value = request
    if kind == VALIDATE:
        service.validate_session(ids[slot], CLIENT)
    elif kind == UPDATE:
        service.update_session(ids[slot], {"cart": [value]})
    else:
        service.end_session(ids[slot])
        ids[slot] = service.create_session(f"user{slot}", {"cart": []}, CLIENT)


async def serve_async(service: Any, ids: list[str], request: tuple[int, int, int]) -> None:
    """`serve` on an AsyncSessionService."""
    kind, slot, value = request
    if kind == VALIDATE:
        await service.validate_session(ids[slot], CLIENT)
    elif kind == UPDATE:
        await service.update_session(ids[slot], {"cart": [value]})
    else:
        await service.end_session(ids[slot])
        ids[slot] = await service.create_session(f"user{slot}", {"cart": []}, CLIENT)


def timed(
    plan: Plan, serve_one: Callable[[tuple[int, int, int]], None], finish: Callable[[], object]
) -> tuple[list[int], float]:
    """Each request of ``plan`` served by ``serve_one``, then ``finish`` (a last flush):
    the nanoseconds each request took, and the seconds of the whole."""
    latencies = []
    clock, started = time.perf_counter_ns, time.perf_counter()
    for request in plan:
        begun = clock()
        serve_one(request)
        latencies.append(clock() - begun)
    finish()
    return latencies, time.perf_counter() - started


def run_sync(
    url: str,
    settings: dict[str, Any],
    plan: Plan,
    users: int,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The workload on a SessionService; the timed part is the request loop and final flush.
    ``on_start`` is called once the sessions are written, just before the timed part."""
    with SessionService(url, **settings) as service:
        ids = [service.create_session(f"user{n}", {"cart": []}, CLIENT) for n in range(users)]
        service.force_save()
        if on_start is not None:
            on_start()
        before = service.stats()
        latencies, seconds = timed(
            plan, lambda request: serve(service, ids, request), service.force_save
        )
        after = service.stats()
    return summary(
        latencies,
        seconds,
        after["store_writes"] - before["store_writes"],
        after["sessions_written"] - before["sessions_written"],
    )


async def run_async(
    url: str,
    settings: dict[str, Any],
    plan: Plan,
    users: int,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The same workload on an AsyncSessionService (``on_start`` as in `run_sync`)."""
    from pooled_sessions import AsyncSessionService

    service = AsyncSessionService(url, **settings)
    try:
        ids = [await service.create_session(f"user{n}", {"cart": []}, CLIENT) for n in range(users)]
        await service.async_force_save()
        if on_start is not None:
            on_start()
        before, latencies = await _stats(service), []
        clock, started = time.perf_counter_ns, time.perf_counter()
        for request in plan:
            begun = clock()
            await serve_async(service, ids, request)
            latencies.append(clock() - begun)
            await asyncio.sleep(0)  # back to the loop between requests, as a server does
        await service.async_force_save()
        seconds, after = time.perf_counter() - started, await _stats(service)
    finally:
        await service.shutdown()
    return summary(
        latencies,
        seconds,
        after["store_writes"] - before["store_writes"],
        after["sessions_written"] - before["sessions_written"],
    )


async def _stats(service: Any) -> dict[str, Any]:
    stats = service.stats()
    return await stats if asyncio.iscoroutine(stats) else dict(stats)


def workloads(stores: Stores, users: int, requests: int, repeats: int) -> list[dict[str, Any]]:
    """Each store in each mode on a fresh store, ``repeats`` times (once when a run is slow);
    the median run is kept."""
    plan = make_plan(users, requests)
    run_sync(stores.url("memory"), {}, plan[: requests // 4], users)  # warm-up, not reported
    rows = []
    for name in STORE_NAMES:
        for mode, settings in MODES.items():
            runs = [_one_workload(name, stores.url(name), settings, plan, users)]
            while len(runs) < repeats and sum(r["seconds"] for r in runs) < REPEAT_BUDGET:
                runs.append(_one_workload(name, stores.url(name), settings, plan, users))
            result = sorted(runs, key=lambda r: r["requests_per_second"])[len(runs) // 2]
            rows.append({"store": name, "mode": mode, "runs": len(runs), **result})
            print(
                f"  workload {name:8} {mode:13} {result['requests_per_second']:>9,.0f} req/s"
                f"  p99 {result['p99_us']:>8,.0f} µs",
                flush=True,
            )
    return rows


def _one_workload(
    name: str,
    url: str,
    settings: dict[str, Any],
    plan: Plan,
    users: int,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The workload on the service that fits the store (asyncio for the aiofiles store)."""
    if name == "aiofile":
        return asyncio.run(run_async(url, settings, plan, users, on_start))
    return run_sync(url, settings, plan, users, on_start)


def upserts(start: int, count: int, now: float, created: bool = True) -> list[Upsert]:
    """Sessions ``start``.. as store writes: new ones, or a one-attribute change of each."""
    attributes = encode_attributes({"cart": [1, 2, 3], "role": "member"})
    changed = frozenset(attributes) if created else frozenset({"cart"})
    return [
        Upsert(
            session_id=f"bench-{n:07d}",
            username=f"user{n % 5000}",
            attributes=attributes,
            changed=changed,
            removed=frozenset(),
            ip=CLIENT["ip"],
            user_agent=CLIENT["user_agent"],
            created_at=now,
            last_accessed_at=now,
            expires_at=now + 3600.0,
            absolute_expires_at=None,
            created=created,
        )
        for n in range(start, start + count)
    ]


def flush_times(stores: Stores, sizes: tuple[int, ...], repeats: int = 5) -> dict[str, Any]:
    """Seconds one flush of FLUSH_BATCH changed sessions takes, as the store grows."""
    results: dict[str, Any] = {}
    for name in STORE_NAMES:
        store = open_target(stores.url(name), Settings())
        try:
            held, row = 0, {}
            for size in sizes:
                now = time.time()
                for start in range(held, size, 20_000):
                    store.write(upserts(start, min(20_000, size - start), now), now)
                held = size
                batch = upserts(0, FLUSH_BATCH, now, created=False)
                row[str(size)] = _median_seconds(store, batch, repeats)
            results[name] = row
            print(
                f"  flush    {name:8} "
                + "  ".join(f"{k}: {v * 1000:.2f} ms" for k, v in row.items()),
                flush=True,
            )
        finally:
            store.close()
    return results


def _median_seconds(store: Store, batch: list[Upsert], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.write(batch, time.time())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def memory_per_session(stores: Stores, live: int) -> dict[str, Any]:
    """Process bytes per live session (tracemalloc), and the store's own bytes per session."""
    results: dict[str, Any] = {}
    for name in STORE_NAMES:
        url = stores.url(name)
        server_before = _server_bytes(stores.servers(name))
        gc.collect()
        tracemalloc.start()
        try:
            if name == "aiofile":
                process = asyncio.run(_held_async(url, live))
            else:
                process = _held_sync(url, live)
        finally:
            tracemalloc.stop()
        store = _store_bytes(name, url, stores, server_before) / live
        results[name] = {"process_bytes": process, "store_bytes": store}
        print(
            f"  memory   {name:8} {process:,.0f} B/session in process, "
            f"{store:,.0f} B/session in the store",
            flush=True,
        )
    return results


def _held_sync(
    url: str,
    live: int,
    attributes: Callable[[int], dict[str, Any]] = lambda n: {"cart": [n], "role": "member"},
    held: Callable[[], None] | None = None,
    client: Callable[[int], dict[str, str]] = lambda n: CLIENT,
) -> float:
    """Traced bytes per session while a service holds ``live`` flushed sessions, each with
    ``attributes(n)`` from ``client(n)``; ``held`` is called while they are held (for a
    tracemalloc snapshot)."""
    with SessionService(url, write_behind=True) as service:
        baseline = tracemalloc.get_traced_memory()[0]
        for n in range(live):
            service.create_session(f"user{n}", attributes(n), client(n))
        service.force_save()
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - baseline) / live
        if held is not None:
            held()
        return per_session


async def _held_async(url: str, live: int) -> float:
    from pooled_sessions import AsyncSessionService

    service = AsyncSessionService(url, write_behind=True)
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for n in range(live):
            await service.create_session(f"user{n}", {"cart": [n], "role": "member"}, CLIENT)
        await service.async_force_save()
        gc.collect()
        return float(tracemalloc.get_traced_memory()[0] - baseline) / live
    finally:
        await service.shutdown()


def _server_bytes(servers: list[RedisServer]) -> int:
    total = 0
    for server in servers:
        for line in server.cli("info", "memory").splitlines():
            if line.startswith("used_memory:"):
                total += int(line.split(":")[1])
    return total


def _store_bytes(name: str, url: str, stores: Stores, server_before: int) -> float:
    if name in ("file", "aiofile"):
        path = url.removeprefix("aiofile://")  # the snapshot and its journal
        return float(sum(os.path.getsize(p) for p in (path, path + ".journal")))
    if name in ("redis", "cluster"):
        return float(_server_bytes(stores.servers(name)) - server_before)
    return 0.0


def run_all(quick: bool) -> dict[str, Any]:
    users, requests = (500, 5_000) if quick else (USERS, REQUESTS)
    sizes = (1_000, 10_000) if quick else FLUSH_SIZES
    started = time.perf_counter()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores = Stores(stack, scratch)
        results: dict[str, Any] = {
            "machine": compare_render.machine(stores.redis),
            "workload": {
                "users": users,
                "requests": requests,
                "mix": "89% validate, 10% update, 1% end then log in again",
                "modes": MODES,
            },
        }
        sections: list[tuple[str, str, Callable[[], Any]]] = [
            (
                "workload_results",
                "workload",
                lambda: workloads(stores, users, requests, 1 if quick else 3),
            ),
            ("flush_seconds", "flush time against store size", lambda: flush_times(stores, sizes)),
            (
                "memory_per_session",
                "memory per live session",
                lambda: memory_per_session(stores, users),
            ),
            ("migration", "migration", lambda: migration_runs(stores, scratch, quick)),
        ]
        timings = results["section_seconds"] = {}
        for key, title, section in sections:
            print(f"{title}:", flush=True)
            begun = time.perf_counter()
            results[key] = section()
            timings[key] = round(time.perf_counter() - begun, 1)
    results["total_seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--stores",
        nargs="+",
        choices=STORE_NAMES,
        default=STORE_NAMES,
        help="stores to compare (default: all)",
    )
    args = parser.parse_args(argv)
    STORE_NAMES[:] = args.stores
    results = run_all(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    table = compare_render.markdown(results)
    (args.out / "compare.md").write_text(table)
    compare_render.chart(results, args.out / "compare.png")
    print(table)
    print(f"written to {args.out} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
