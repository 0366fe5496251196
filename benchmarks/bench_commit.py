"""What committing a change before the call returns costs, against the raw write it needs.

Side by side, in one run:

- Redis: one ``update_session`` (the default mode: its change is in Redis when it returns)
  against a redis-py pipeline of ``HSET`` + ``PEXPIRE`` on one hash (the least a
  write-through store must send), one call at a time;
- file: one ``update_session`` on a sessions file against appending a line to a file and
  ``fdatasync`` (the least a durable file store must do), at two store sizes;
- group commit: changes per second of 16 threads, each changing its own session, against
  one thread, on Redis and on a file, with the store writes they took;
- reads: ``validate_session`` of a cached session, which by default first asks a file (or
  memory) store whether another process wrote it, against ``write_behind=True`` (CPU time).

A time per call is the median of 7 rounds, each running the raw write, the service's call
and the store's write alone one after the other (`side_by_side`).

Run: ``.venv/bin/python benchmarks/bench_commit.py [--quick]`` (starts its own redis-server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from pooled_sessions import SessionService  # noqa: E402
from tests.redis_servers import RedisServer  # noqa: E402

THREADS = 16
TTL_MS = 30 * 60 * 1000


def per_call(run: Callable[[int], None], count: int) -> float:
    """The mean seconds per call of one run of ``count`` calls."""
    started = time.perf_counter()
    run(count)
    return (time.perf_counter() - started) / count


def side_by_side(runs: Sequence[Callable[[int], None]], count: int, rounds: int) -> list[float]:
    """The median seconds per call of each of ``runs`` over ``rounds`` rounds, each round
    running them one after the other, so a slow moment of a shared machine weighs on all
    of them alike (a best-of-N of each apart would pick lucky moments unevenly)."""
    seen: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, times in zip(runs, seen, strict=True):
            times.append(per_call(run, count))
    return [statistics.median(times) for times in seen]


def service_updates(svc: SessionService, sid: str) -> Callable[[int], None]:
    def run(count: int) -> None:
        for n in range(count):
            svc.update_session(sid, {"cart": [n, n + 1], "step": n})

    return run


def redis_pipelines(client: redis.Redis, key: str) -> Callable[[int], None]:
    def run(count: int) -> None:
        for n in range(count):
            pipe = client.pipeline(transaction=False)
            pipe.hset(key, mapping={".cart": json.dumps([n, n + 1]), ".step": str(n)})
            pipe.pexpire(key, TTL_MS)
            pipe.execute()

    return run


def appends(path: Path) -> Callable[[int], None]:
    def run(count: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for n in range(count):
                line = json.dumps({"id": "x" * 43, "cart": [n, n + 1], "step": n}) + "\n"
                os.write(fd, line.encode())
                os.fdatasync(fd)
        finally:
            os.close(fd)

    return run


def threaded(svc: SessionService, count: int) -> tuple[float, float, int]:
    """Changes per second of one thread and of `THREADS` threads, and the store writes
    the threaded run took; each thread changes a session of its own."""
    ids = [svc.create_session(f"user{n}", {"step": 0}) for n in range(THREADS)]
    single = 1.0 / per_call(service_updates(svc, ids[0]), count)
    start = threading.Barrier(THREADS + 1)
    each = count // THREADS * 4  # the threads run longer, so start-up costs little

    def worker(sid: str) -> None:
        start.wait()
        service_updates(svc, sid)(each)

    threads = [threading.Thread(target=worker, args=(sid,)) for sid in ids]
    for thread in threads:
        thread.start()
    writes = svc.stats()["store_writes"]
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return single, each * THREADS / seconds, svc.stats()["store_writes"] - writes


def store_writes(svc: SessionService, sid: str) -> Callable[[int], None]:
    """The store's own write of the change `service_updates` makes, without the service."""
    store: Any = svc._store
    entry = svc._engine._entries[sid]

    def run(count: int) -> None:
        for _ in range(count):
            store.write([entry.upsert({"cart", "step"}, set(), False)], time.time())

    return run


def redis_rows(server: RedisServer, count: int, repeat: int) -> list[list[str]]:
    client = redis.Redis(port=server.port)
    with SessionService(f"{server.url}?prefix=bench") as svc:
        sid = svc.create_session("alice", {"cart": []})
        runs = [redis_pipelines(client, "bench:raw"), service_updates(svc, sid)]
        raw, ours, write = side_by_side([*runs, store_writes(svc, sid)], count, repeat)
        single, many, writes = threaded(svc, count)
    client.close()
    return [
        ["redis", "update_session, one thread", us(ours), us(raw), ratio(ours, raw), "1.5x"],
        ["redis", "(its RedisStore.write alone)", us(write), us(raw), ratio(write, raw), ""],
        group_row("redis", single, many, writes, count),
    ]


def file_rows(directory: Path, count: int, repeat: int, sizes: Sequence[int]) -> list[list[str]]:
    rows = []
    for size in sizes:
        path = directory / f"sessions-{size}.json"
        with SessionService(path) as svc:
            svc.force_save()
            sid = svc.create_session("alice", {"cart": []})
            for n in range(size - 1):  # the others, written in one batch
                svc.create_session(f"user{n}", {"cart": [n]})
            runs = [appends(directory / "journal.log"), service_updates(svc, sid)]
            raw, ours, write = side_by_side([*runs, store_writes(svc, sid)], count, repeat)
        label = f"update_session, {size:,} sessions in the file"
        rows.append(["file", label, us(ours), us(raw), ratio(ours, raw), "2x"])
        rows.append(
            ["file", "(its JsonFileStore.write alone)", us(write), us(raw), ratio(write, raw), ""]
        )
    with SessionService(directory / "threads.json") as svc:
        rows.append(group_row("file", *threaded(svc, count), count))
    return rows


def validate_rows(directory: Path, count: int) -> list[list[str]]:
    """validate_session per CPU second of a cached session, by default and written behind."""
    rows = []
    for store, url in (("memory", "memory://bench-commit"), ("file", str(directory / "v.json"))):
        rates = []
        for write_behind in (False, True):
            with SessionService(url, write_behind=write_behind) as svc:
                ids = [svc.create_session(f"user{n}", {"cart": []}) for n in range(100)]
                started = time.process_time()
                for n in range(count):
                    svc.validate_session(ids[n % 100])
                rates.append(count / (time.process_time() - started))
        default, behind = rates
        rows.append(
            [
                store,
                "validate_session (cached), CPU time",
                f"{default:,.0f}/s",
                f"{behind:,.0f}/s (write_behind)",
                f"{behind / default:.1f}x slower",
                "",
            ]
        )
    return rows


def group_row(store: str, single: float, many: float, writes: int, count: int) -> list[str]:
    changes = count // THREADS * 4 * THREADS
    return [
        store,
        f"{THREADS} threads: changes/s (store writes per change: {writes / changes:.2f})",
        f"{many:,.0f}/s",
        f"{single:,.0f}/s (1 thread)",
        f"{many / single:.1f}x",
        "5x",
    ]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def ratio(ours: float, raw: float) -> str:
    return f"{ours / raw:.2f}x"


def report(rows: list[list[str]]) -> str:
    head = ["store", "case", "pooled_sessions", "raw write", "ratio", "target"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}"
    )
    return "\n".join([f"bench_commit ({machine})", "", *lines])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls: a smoke run")
    args = parser.parse_args(argv)
    count, repeat = (160, 1) if args.quick else (800, 7)
    sizes = (100, 1_000) if args.quick else (100, 10_000)
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch) / "redis").start()
        try:
            rows = redis_rows(server, count, repeat)
        finally:
            server.stop()
        rows += file_rows(Path(scratch), count // 4, repeat, sizes)
        rows += validate_rows(Path(scratch), count * 25)
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
