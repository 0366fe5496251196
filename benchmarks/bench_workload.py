"""The standard workload on every store in every mode, against Flask-Session; the same from
4 processes at once; memory per live session. Writes benchmarks/results/workload.{json,md}.

Workload (`compare_backends.make_plan`): 2,000 sessions, then 20,000 requests: 89% validate,
10% update, 1% end and log in again. Stores: memory, JSON file, aiofiles file, Redis (a
redis-server this script starts on a free port). Modes: the default (``SessionService(url)``,
each change committed when its call returns), ``write_behind=True`` and write-through
(`compare_backends.MODES`). Store writes per request: the service's ``store_writes``; for
the files also the journal appends and whole files written (a snapshot, or a new journal),
counted in `fsio`; for Redis the commands the app sent (INFO commandstats, less the
commands only run inside the store's Lua scripts).

Baseline: the real Flask-Session package (`flask_session.redis.RedisSessionInterface`) on
the same redis-server, its defaults (msgpack, a permanent session, Flask's
``SESSION_REFRESH_EACH_REQUEST``), driven per request as Flask drives it: ``open_session``
then ``save_session``, which is

- validate: GET ``session:<id>``, decode, read ``user``; SET ``session:<id>`` EX 1800;
- update: GET, decode, set ``cart``; SET EX;
- end and log in again: GET, ``session.clear()``; DEL; then a new id, ``user``, ``cart``,
  ``ip`` and ``user_agent`` set; SET EX.

What Flask adds around that is left out: no WSGI, routing, app or request context; the
request is a stand-in holding only the cookie, the response a stand-in whose
``set_cookie`` does nothing (so Flask-Session's cookie formatting is not timed either).
For the file, Flask-Session's cachelib interface (`CacheLibSessionInterface`) over
cachelib's ``FileSystemCache`` with no pruning (``threshold=0``): one file per session,
each save a temp file and a rename, never an fsync; the same calls.

4 processes: each (spawned) runs a quarter of the workload on sessions of its own, default
mode, all started at once on one Redis and on one file; requests/s is all their requests
over the wall time from the first start to the last finish.

Memory: tracemalloc around creating 20,000 sessions of about 100 bytes of attributes in a
``SessionService`` (memory, file and Redis stores; ``write_behind=True``, which holds the
same once flushed), each from a client whose strings are new, as a server hands them over:
bytes per session and the lines that hold the most.

Run: ``.venv/bin/python benchmarks/bench_workload.py [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compare_render  # noqa: E402
from benchmarks.bench_redis import SCRIPT_ONLY  # noqa: E402
from benchmarks.compare_backends import (  # noqa: E402
    CLIENT,
    MODES,
    UPDATE,
    VALIDATE,
    Plan,
    Stores,
    _held_sync,
    _one_workload,
    make_plan,
    run_sync,
    summary,
    timed,
)
from pooled_sessions.adapters.file import fsio  # noqa: E402
from tests.redis_servers import RedisServer, commands_called  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ALL_MODES: dict[str, dict[str, Any]] = {"default": {}, **MODES}
STORES = ("memory", "file", "aiofile", "redis")
PROCESSES = 4
LIVE = 20_000
COOKIE = "session"  # Flask's SESSION_COOKIE_NAME
LIFETIME = timedelta(minutes=30)
GATE_SECONDS = 600.0
GOAL_RATIO, GOAL_WRITES, GOAL_BYTES = 10.0, 0.15, 1_000

FILE_WRITES: Counter[str] = Counter()


def count_file_writes() -> None:
    """Count, in `FILE_WRITES`, this process's file-store writes: journal appends and whole
    files written (a snapshot, or a new journal with its first lines)."""
    append, replace = fsio.append, fsio.replace_pinned
    if append.__name__ == "counted_append":
        return  # counting already

    def counted_append(path: str, inode: tuple[int, int], at: int, data: bytes) -> fsio.Appended:
        """`fsio.append`, counted."""
        FILE_WRITES["journal_appends"] += 1
        return append(path, inode, at, data)

    def counted_replace(path: str, pieces: Sequence[bytes]) -> fsio.Pin:
        """`fsio.replace_pinned`, counted by what it writes."""
        FILE_WRITES["new_journals" if path.endswith(".journal") else "snapshots"] += 1
        return replace(path, pieces)

    fsio.append, fsio.replace_pinned = counted_append, counted_replace


class Tally:
    """What a store took over a timed part: file writes (`FILE_WRITES`) and, on Redis,
    the commands sent (INFO commandstats)."""

    def __init__(self, server: RedisServer | None = None, scripts: bool = True) -> None:
        self.server = server
        self.scripts = scripts  # leave out commands only run inside the store's scripts

    def start(self) -> None:
        """Zero the counts: the timed part begins."""
        FILE_WRITES.clear()
        if self.server is not None:
            self.server.cli("config", "resetstat")

    def per_request(self, requests: int, files: Counter[str] | None = None) -> dict[str, Any]:
        """The counts since `start`, per request (``files``: counted in other processes)."""
        counts: dict[str, Any] = {
            f"{name}_per_request": n / requests for name, n in (files or FILE_WRITES).items()
        }
        if self.server is not None:
            calls = commands_called(self.server)
            calls.pop("config|resetstat", None)
            sent = {c: n for c, n in calls.items() if not (self.scripts and c in SCRIPT_ONLY)}
            counts["redis_commands_sent_per_request"] = sum(sent.values()) / requests
            counts["redis_commands"] = sent
        return counts


class _Request:
    """A stand-in for a Flask request: only the session cookie, which is all
    ``open_session`` reads."""

    def __init__(self, sid: str | None) -> None:
        self.cookies = {COOKIE: sid} if sid else {}


class _Response:
    """A stand-in for a Flask response: ``save_session`` adds to its Vary header and sets
    its cookie, which this does not format."""

    def __init__(self) -> None:
        self.vary: set[str] = set()

    def set_cookie(self, *args: Any, **kwargs: Any) -> None:
        """Ignored: the cookie is not part of what is compared."""

    def delete_cookie(self, *args: Any, **kwargs: Any) -> None:
        """Ignored, as `set_cookie`."""


class FlaskSessions:
    """Flask-Session's Redis interface (a ``redis://`` target) or its cachelib file interface
    (a directory), driven as Flask drives it for each request; counts its store writes."""

    def __init__(self, target: str) -> None:
        import redis
        from cachelib.file import FileSystemCache
        from flask import Flask
        from flask_session.cachelib import CacheLibSessionInterface
        from flask_session.redis import RedisSessionInterface

        self.app = Flask("bench_workload")
        self.app.permanent_session_lifetime = LIFETIME
        self.writes = 0
        if target.startswith("redis://"):
            client = redis.Redis.from_url(target)
            prefix = f"fs{uuid.uuid4().hex[:8]}:"
            self.interface = RedisSessionInterface(self.app, client=client, key_prefix=prefix)
        else:
            cache = FileSystemCache(target, threshold=0)
            self.interface = CacheLibSessionInterface(self.app, client=cache)

    def request(self, sid: str | None, change: Callable[[Any], None]) -> str:
        """One request's session: opened, changed by ``change``, saved; its id after."""
        session = self.interface.open_session(self.app, _Request(sid))
        change(session)
        self.interface.save_session(self.app, session, _Response())
        self.writes += 1  # every save writes: a SET (refreshed each request) or a DEL
        return str(session.sid)

    def login(self, slot: int) -> str:
        """A new session for user ``slot``, as a login request makes it."""
        return self.request(
            None,
            lambda s: s.update(
                user=f"user{slot}", cart=[], ip=CLIENT["ip"], ua=CLIENT["user_agent"]
            ),
        )

    def serve(self, ids: list[str], request: tuple[int, int, int]) -> None:
        """One request of a plan (`compare_backends.serve` on Flask-Session)."""
        kind, slot, value = request
        if kind == VALIDATE:
            self.request(ids[slot], lambda s: s.get("user"))
        elif kind == UPDATE:
            self.request(ids[slot], lambda s: s.__setitem__("cart", [value]))
        else:
            self.request(ids[slot], lambda s: s.clear())
            ids[slot] = self.login(slot)


def run_flask(
    target: str, plan: Plan, users: int, started: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The workload on Flask-Session (`run_sync`'s shape: ``started`` before the timed part)."""
    sessions = FlaskSessions(target)
    ids = [sessions.login(n) for n in range(users)]
    if started is not None:
        started()
    before = sessions.writes
    latencies, seconds = timed(plan, lambda request: sessions.serve(ids, request), lambda: None)
    writes = sessions.writes - before
    return summary(latencies, seconds, writes, writes)


def single(stores: Stores, users: int, requests: int) -> list[dict[str, Any]]:
    """Each store in each mode, then Flask-Session on the same Redis and on a directory."""
    plan = make_plan(users, requests)
    run_sync(stores.url("memory"), {}, plan[: requests // 4], users)  # warm-up, not reported
    rows = []
    for name in STORES:
        tally = Tally(stores.redis if name == "redis" else None)
        for mode, settings in ALL_MODES.items():
            url = stores.url(name)
            result = _one_workload(name, url, settings, plan, users, tally.start)
            rows.append(_row(name, mode, result, tally.per_request(requests)))
    for name, target in (("redis", stores.redis.url), ("file", _directory(stores))):
        tally = Tally(stores.redis if name == "redis" else None, scripts=False)
        result = run_flask(target, plan, users, tally.start)
        rows.append(_row(name, "Flask-Session", result, tally.per_request(requests)))
    return rows


def _row(store: str, mode: str, result: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    """One result row, printed as it comes."""
    print(
        f"  {store:8} {mode:14} {result['requests_per_second']:>9,.0f} req/s  "
        f"{result['store_writes_per_request']:.4f} writes/request",
        flush=True,
    )
    return {"store": store, "mode": mode, **result, **counts}


def _directory(stores: Stores) -> str:
    """A new directory for Flask-Session's file sessions."""
    path = stores.scratch / f"flask-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return str(path)


def _worker(
    kind: str, target: str, part: int, users: int, requests: int, gates: Any, out: Any
) -> None:
    """One of the processes: its own sessions, its share of the workload, begun with the
    others (the parent zeroes the counts between the two gates)."""
    count_file_writes()
    plan = make_plan(users, requests, seed=part)
    began: list[float] = []

    def started() -> None:
        """Wait for every process to be ready, then for the go."""
        gates.wait(GATE_SECONDS)
        gates.wait(GATE_SECONDS)
        began.append(time.monotonic())

    if kind == "pooled_sessions":
        result = run_sync(target, {}, plan, users, started)
    else:
        result = run_flask(target, plan, users, started)
    out.put({**result, "began": began[0], "files": dict(FILE_WRITES)})


def together(
    kind: str, store: str, target: str, tally: Tally, users: int, requests: int
) -> dict[str, Any]:
    """The workload split over `PROCESSES` processes started at once on one store."""
    spawn = multiprocessing.get_context("spawn")
    gates, out = spawn.Barrier(PROCESSES + 1), spawn.Queue()
    share, part_users = requests // PROCESSES, users // PROCESSES
    workers = [
        spawn.Process(target=_worker, args=(kind, target, n, part_users, share, gates, out))
        for n in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        gates.wait(GATE_SECONDS)  # every process has its sessions
        tally.start()
        gates.wait(GATE_SECONDS)
        parts = [out.get(timeout=GATE_SECONDS) for _ in workers]
    finally:
        for worker in workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()
    total = share * PROCESSES
    wall = max(p["began"] + p["seconds"] for p in parts) - min(p["began"] for p in parts)
    files: Counter[str] = Counter()
    for part in parts:
        files.update(part["files"])
    row = {
        "store": store,
        "library": kind,
        "processes": PROCESSES,
        "requests": total,
        "wall_seconds": wall,
        "requests_per_second": total / wall,
        "each_requests_per_second": [share / p["seconds"] for p in parts],
        "store_writes_per_request": sum(p["store_writes_per_request"] for p in parts) / PROCESSES,
        **tally.per_request(total, files),
    }
    print(
        f"  {PROCESSES} processes {store:6} {kind:16} {row['requests_per_second']:>9,.0f} req/s",
        flush=True,
    )
    return row


def processes(stores: Stores, users: int, requests: int) -> list[dict[str, Any]]:
    """4 processes at once: pooled_sessions (default mode) and Flask-Session, on one Redis
    and on one file (Flask-Session: one directory)."""
    redis_server = stores.redis
    return [
        together(
            "pooled_sessions", "redis", stores.url("redis"), Tally(redis_server), users, requests
        ),
        together(
            "Flask-Session",
            "redis",
            redis_server.url,
            Tally(redis_server, scripts=False),
            users,
            requests,
        ),
        together("pooled_sessions", "file", stores.url("file"), Tally(), users, requests),
        together("Flask-Session", "file", _directory(stores), Tally(), users, requests),
    ]


def attributes(n: int) -> dict[str, Any]:
    """About 100 bytes of attributes as JSON, different for each session."""
    return {
        "cart": [f"sku-{n % 997:04d}", f"sku-{n * 7 % 991:04d}"],
        "theme": "dark",
        "lang": "en-GB",
        "visits": n,
        "seen": 1_764_547_200 + n,
    }


def client(n: int) -> dict[str, str]:
    """A request's client as a server hands it over: new strings each time, the address one
    of a few hundred, the user agent one of a few."""
    agent = ("Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (iPhone)", "curl/8.5")[n % 3]
    return {"ip": f"198.51.{n % 3}.{n % 250}", "user_agent": "".join([agent, ""])}


def memory(stores: Stores, live: int) -> dict[str, Any]:
    """Traced bytes per live session on the memory, file and Redis stores, with the lines
    that hold the most (tracemalloc, one frame)."""
    results: dict[str, Any] = {"attribute_bytes": len(json.dumps(attributes(live // 2)))}
    for name in ("memory", "file", "redis"):
        held, snapshot = _traced(stores.url(name), live)
        top = [
            {
                "line": _where(stat.traceback[0].filename, stat.traceback[0].lineno),
                "bytes_per_session": stat.size / live,
                "blocks_per_session": stat.count / live,
            }
            for stat in snapshot.statistics("lineno")[:10]
        ]
        results[name] = {"bytes_per_session": held, "top_lines": top}
        print(f"  memory {name:6} {held:,.0f} B per live session", flush=True)
    return results


def _traced(url: str, live: int) -> tuple[float, tracemalloc.Snapshot]:
    """Bytes per session while a service holds ``live`` sessions, and a snapshot then."""
    snapshots: list[tracemalloc.Snapshot] = []
    gc.collect()
    tracemalloc.start()
    try:
        held = _held_sync(
            url, live, attributes, lambda: snapshots.append(tracemalloc.take_snapshot()), client
        )
    finally:
        tracemalloc.stop()
    return held, snapshots[0]


def _where(filename: str, line: int) -> str:
    """A traced line as ``package/module.py:line``, shorter than its full path."""
    path = Path(filename)
    try:
        return f"{path.relative_to(ROOT)}:{line}"
    except ValueError:
        return f"{path.parent.name}/{path.name}:{line}"


def run_all(quick: bool) -> dict[str, Any]:
    """Every section in one run."""
    users, requests, live = (500, 5_000, 2_000) if quick else (2_000, 20_000, LIVE)
    count_file_writes()
    started = time.perf_counter()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores = Stores(stack, scratch, cluster=False)
        results: dict[str, Any] = {
            "machine": compare_render.machine(stores.redis),
            "flask_session": metadata.version("Flask-Session"),
            "workload": {"users": users, "requests": requests, "modes": ALL_MODES},
        }
        print("one process:", flush=True)
        results["single"] = single(stores, users, requests)
        print(f"{PROCESSES} processes:", flush=True)
        results["processes"] = processes(stores, users, requests)
        print("memory:", flush=True)
        results["memory"] = memory(stores, live)
    results["total_seconds"] = time.perf_counter() - started
    return results


def _rate(rows: list[dict[str, Any]], store: str, who: str, key: str = "mode") -> float:
    """Requests/s of the row of ``store`` whose ``key`` is ``who``."""
    return float(
        next(r for r in rows if r["store"] == store and r[key] == who)["requests_per_second"]
    )


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def report(results: dict[str, Any]) -> str:
    """The results as Markdown tables, with each goal met or missed."""
    single_rows, many, mem = results["single"], results["processes"], results["memory"]
    base = _rate(single_rows, "redis", "Flask-Session")
    lines = [
        f"{results['workload']['users']:,} sessions, {results['workload']['requests']:,} "
        "requests (89% validate, 10% update, 1% end and log in again); "
        f"Flask-Session {results['flask_session']}.",
        "",
        "| store | mode | requests/s | / Flask-Session on Redis | p99 µs | store writes / request "
        "| journal appends / request | whole files written / request | Redis commands sent "
        "/ request |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in single_rows:
        files = (
            r.get("journal_appends_per_request"),
            r.get("snapshots_per_request", 0) + r.get("new_journals_per_request", 0),
        )
        on_file = r["store"] in ("file", "aiofile") and r["mode"] != "Flask-Session"
        lines.append(
            f"| {r['store']} | {r['mode']} | {r['requests_per_second']:,.0f} | "
            f"{r['requests_per_second'] / base:.1f}x | {r['p99_us']:,.0f} | "
            f"{r['store_writes_per_request']:.4f} | "
            + (f"{files[0] or 0:.4f} | {files[1]:.4f}" if on_file else " | ")
            + " | "
            + (
                f"{r['redis_commands_sent_per_request']:.3f}"
                if "redis_commands_sent_per_request" in r
                else ""
            )
            + " |"
        )
    ours = _rate(single_rows, "redis", "default")
    worst = max(r["store_writes_per_request"] for r in single_rows if r["mode"] == "default")
    lines += [
        "",
        f"- default mode on Redis {ours / base:.1f}x Flask-Session's requests/s on the same "
        f"Redis (goal 10x): {_met(ours / base >= GOAL_RATIO)}.",
        f"- default mode, store writes per request at most {worst:.4f} on any store (goal "
        f"{GOAL_WRITES}): {_met(worst <= GOAL_WRITES)}.",
        "",
        f"{PROCESSES} processes at once, default mode, each a quarter of the workload on its "
        "own sessions:",
        "",
        "| store | library | requests/s (all, over the wall time) | store writes / request "
        "| Redis commands sent / request |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in many:
        sent = r.get("redis_commands_sent_per_request")
        lines.append(
            f"| {r['store']} | {r['library']} | {r['requests_per_second']:,.0f} | "
            f"{r['store_writes_per_request']:.4f} | {'' if sent is None else f'{sent:.3f}'} |"
        )
    for store in ("redis", "file"):
        ratio = _rate(many, store, "pooled_sessions", "library") / _rate(
            many, store, "Flask-Session", "library"
        )
        lines.append(
            f"- {store}: {ratio:.1f}x Flask-Session's requests/s from {PROCESSES} processes "
            f"(goal 10x): {_met(ratio >= GOAL_RATIO)}."
        )
    file_vs_redis = _rate(many, "file", "pooled_sessions", "library") / _rate(
        many, "redis", "Flask-Session", "library"
    )
    lines += [
        f"- file against Flask-Session on Redis, {PROCESSES} processes: {file_vs_redis:.1f}x.",
        "",
        f"Memory per live session (attributes of {mem['attribute_bytes']} bytes as JSON; "
        "the memory and file stores keep their own copy of each record in the process, "
        "Redis keeps it in redis-server):",
        "",
    ]
    for store in ("memory", "file", "redis"):
        held = mem[store]["bytes_per_session"]
        top = ", ".join(
            f"`{t['line']}` {t['bytes_per_session']:,.0f}" for t in mem[store]["top_lines"][:6]
        )
        lines.append(
            f"- {store}: {held:,.0f} B (goal {GOAL_BYTES:,}): {_met(held <= GOAL_BYTES)}; "
            f"most held at {top}."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    results = run_all(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "workload-quick" if args.quick else "workload"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (args.out / f"{name}.md").write_text(table)
    print(table)
    print(f"written to {args.out} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
