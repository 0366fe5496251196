"""How soon another app server's cache drops a session one server ended or changed, on Redis;
and on a JSON file, whether the other process's next call sees it.

Two OS processes share a redis-server this script starts (or its own 3-master cluster,
``--cluster``). The writer ends or changes a session the observer has cached and waits
for the write (``force_save``); the observer's store stamps the moment its ``watch``
callback returned, that is once the service dropped the id. Stamps are CLOCK_MONOTONIC,
which every process on one host shares. Reported, per kind: from the start of the write
(an upper bound of commit to drop) and from the writer's confirmation (negative when the
observer dropped the session before the writer had its reply).

``--file``: the same two processes on one sessions file. After each write returns, the
writer names the session to the observer, whose next call (``validate_session``) must
answer with the change; reported: how many first calls did, and the time from the
writer's confirmation to that call's answer (the message between them included).

Run: ``.venv/bin/python benchmarks/bench_visibility.py [--samples N] [--cluster | --file]``.
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
from pooled_sessions.adapters.redis.events import CatchUp  # noqa: E402
from tests.redis_servers import RedisCluster, RedisServer  # noqa: E402

Stamp = tuple[str, str, float, float]  # id, kind, write started, write confirmed
SETTLE_SECONDS = 0.5


class StampedStore(RedisStore):
    """A Redis store that notes when its service has dropped each id it was told of."""

    def __init__(self, url: str) -> None:
        super().__init__(url, Settings())
        self.dropped: dict[str, float] = {}
        self._lock = threading.Lock()

    def watch(self, callback: Invalidate) -> CatchUp:
        def stamped(ids: Collection[str] | None, ended: bool) -> None:
            callback(ids, ended)
            now = time.monotonic()
            with self._lock:
                for sid in ids or ():
                    self.dropped.setdefault(sid, now)

        return super().watch(stamped)


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


def file_observer(url: str, inbox: Any, outbox: Any) -> None:
    """Cache every session the writer made, then read each one it names at once: whether
    that first call saw the change, and how long after the writer's call returned."""
    with SessionService(url) as service:
        ids = inbox.get()
        for sid in ids:
            assert service.validate_session(sid), "the observer could not read a session"
        outbox.put("cached")
        seen: dict[str, tuple[float, bool]] = {}
        while (message := inbox.get()) != "done":
            sid, kind, value, confirmed = message
            result = service.validate_session(sid)
            answered = time.monotonic()
            if kind == "end":
                fresh = not result.valid
            else:
                fresh = result.session is not None and result.session.attributes["n"] == value
            seen[sid] = (answered - confirmed, fresh)
        outbox.put(seen)


def writer(
    url: str, samples: int, inbox: Any, outbox: Any, peer: Any, announce: bool = False
) -> None:
    """End or change each session once, paced, stamping each write (``announce``: and
    naming it to the observer as soon as its call returned)."""
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
            confirmed = time.monotonic()
            if announce:
                peer.put((sid, kind, -n, confirmed))
            stamps.append((sid, kind, started, confirmed))
        outbox.put(stamps)


def measure(url: str, samples: int, on_file: bool = False) -> tuple[list[Stamp], dict[str, Any]]:
    """Run the writer and the observer (`file_observer` ``on_file``), each in a process of
    its own."""
    spawn = multiprocessing.get_context("spawn")
    to_writer, to_observer, results = spawn.Queue(), spawn.Queue(), spawn.Queue()
    watch = file_observer if on_file else observer
    watching = spawn.Process(target=watch, args=(url, to_observer, results))
    writing = spawn.Process(
        target=writer, args=(url, samples, to_writer, results, to_observer, on_file)
    )
    watching.start()
    writing.start()
    try:
        to_writer.put(results.get(timeout=120))  # "cached", from the observer
        stamps: list[Stamp] = results.get(timeout=600)
        to_observer.put("done")
        dropped: dict[str, Any] = results.get(timeout=60)
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


def file_report(stamps: Sequence[Stamp], seen: dict[str, tuple[float, bool]]) -> str:
    """The file run: first calls that saw the change, and confirmation to answer."""
    lines = [
        f"The next call of another process, one sessions file: {len(stamps)} writes.",
        "",
        "| kind | next call saw it | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("end", "change"):
        mine = [seen[s[0]] for s in stamps if s[1] == kind and s[0] in seen]
        lags = [lag * 1000 for lag, _ in mine]
        lines.append(
            f"| {kind} | {sum(fresh for _, fresh in mine)} of {len(mine)} | "
            f"{statistics.median(lags):.2f} | {percentile(lags, 0.99):.2f} | {max(lags):.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=300, help="ends, and as many changes")
    parser.add_argument("--cluster", action="store_true", help="a 3-master cluster")
    parser.add_argument("--file", action="store_true", help="one sessions file instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.file:
            stamps, seen = measure(str(Path(scratch) / "sessions.json"), args.samples, True)
            print(file_report(stamps, seen))
            return 0
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
