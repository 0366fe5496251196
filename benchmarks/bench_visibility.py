"""How soon another app server's cache drops a session one server ended or changed, on Redis.

Two OS processes share a redis-server this script starts (or its own 3-master cluster,
``--cluster``). The writer ends or changes a session the observer has cached and waits
for the write (``force_save``); the observer's store stamps the moment its ``watch``
callback returned, that is once the service dropped the id. Stamps are CLOCK_MONOTONIC,
which every process on one host shares. Reported, per kind: from the start of the write
(an upper bound of commit to drop) and from the writer's confirmation (negative when the
observer dropped the session before the writer had its reply).

Run: ``.venv/bin/python benchmarks/bench_visibility.py [--samples N] [--cluster]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pooled_sessions import SessionService, Settings  # noqa: E402
from pooled_sessions.adapters.protocol import Invalidate  # noqa: E402
from pooled_sessions.adapters.redis import RedisStore  # noqa: E402
from tests.redis_servers import RedisCluster, RedisServer  # noqa: E402

Stamp = tuple[str, str, float, float]  # id, kind, write started, write confirmed
SETTLE_SECONDS = 0.5


class StampedStore(RedisStore):
    """A Redis store that notes when its service has dropped each id it was told of."""

    def __init__(self, url: str) -> None:
        super().__init__(url, Settings())
        self.dropped: dict[str, float] = {}
        self._lock = threading.Lock()

    def watch(self, callback: Invalidate) -> None:
        def stamped(ids: Collection[str] | None, ended: bool) -> None:
            callback(ids, ended)
            now = time.monotonic()
            with self._lock:
                for sid in ids or ():
                    self.dropped.setdefault(sid, now)

        super().watch(stamped)


def observer(url: str, inbox: Any, outbox: Any) -> None:
    """Cache every session the writer made, then report when each was dropped."""
    store = StampedStore(url)
    with SessionService(store=store) as service:
        ids = inbox.get()
        for sid in ids:
            assert service.validate_session(sid), "the observer could not read a session"
        outbox.put("cached")
        inbox.get()  # the writer is done
        time.sleep(SETTLE_SECONDS)
        outbox.put(dict(store.dropped))


def writer(url: str, samples: int, inbox: Any, outbox: Any, peer: Any) -> None:
    """End or change each session once, paced, stamping each write."""
    with SessionService(url) as service:
        ids = [service.create_session(f"user{n}", {"n": n}) for n in range(2 * samples)]
        service.force_save()
        peer.put(ids)
        assert inbox.get() == "cached"
        rng, stamps = random.Random(7), []
        for n, sid in enumerate(ids):
            time.sleep(rng.uniform(0.002, 0.010))  # one write at a time, not a stream
            kind = "end" if n % 2 else "change"
            started = time.monotonic()
            if kind == "end":
                service.end_session(sid)
            else:
                service.update_session(sid, {"n": -n})
            service.force_save()
            stamps.append((sid, kind, started, time.monotonic()))
        outbox.put(stamps)


def measure(url: str, samples: int) -> tuple[list[Stamp], dict[str, float]]:
    """Run the writer and the observer, each in a process of its own."""
    spawn = multiprocessing.get_context("spawn")
    to_writer, to_observer, results = spawn.Queue(), spawn.Queue(), spawn.Queue()
    watching = spawn.Process(target=observer, args=(url, to_observer, results))
    writing = spawn.Process(target=writer, args=(url, samples, to_writer, results, to_observer))
    watching.start()
    writing.start()
    try:
        to_writer.put(results.get(timeout=120))  # "cached", from the observer
        stamps: list[Stamp] = results.get(timeout=600)
        to_observer.put("done")
        dropped: dict[str, float] = results.get(timeout=60)
    finally:
        for process in (writing, watching):
            process.join(30)
            if process.is_alive():
                process.kill()
    return stamps, dropped


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(stamps: Sequence[Stamp], dropped: dict[str, float], where: str) -> str:
    lines = [
        f"Invalidation across processes, {where}: {len(stamps)} writes.",
        "",
        "| kind | from | p50 ms | p99 ms | max ms | never dropped |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("end", "change"):
        mine = [s for s in stamps if s[1] == kind]
        seen = [s for s in mine if s[0] in dropped]
        for label, confirmed in (("write started", False), ("write confirmed", True)):
            lags = [
                (dropped[sid] - (done if confirmed else began)) * 1000
                for sid, _, began, done in seen
            ]
            lines.append(
                f"| {kind} | {label} | {statistics.median(lags):.2f} | "
                f"{percentile(lags, 0.99):.2f} | {max(lags):.2f} | {len(mine) - len(seen)} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=300, help="ends, and as many changes")
    parser.add_argument("--cluster", action="store_true", help="a 3-master cluster")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.cluster:
            cluster = RedisCluster(Path(scratch)).start()
            stop, url, where = cluster.stop, f"{cluster.url}?prefix=vis", "3-master cluster"
        else:
            server = RedisServer(Path(scratch) / "redis").start()
            stop, url, where = server.stop, f"{server.url}?prefix=vis", "one redis-server"
        try:
            stamps, dropped = measure(url, args.samples)
        finally:
            stop()
    print(report(stamps, dropped, where))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
