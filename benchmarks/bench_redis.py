"""The Redis store against a write-through baseline, on a redis-server this script starts.

Workload: 2,000 sessions, then 20,000 requests (89% validate, 10% update, 1% end and log
in again). Baseline: what Flask-Session and starsessions do per request, GET the session
then SET it back with its expiry (a DEL to end it). Counts come from INFO commandstats;
commands run inside Lua scripts are counted too. Then revocation: how long until a
session ended on one server is refused by another that had it cached.

Run: ``.venv/bin/python benchmarks/bench_redis.py [--users N] [--requests N]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from benchmarks.compare_backends import (  # noqa: E402
    CLIENT,
    END,
    UPDATE,
    Plan,
    make_plan,
    serve,
)
from pooled_sessions import SessionService  # noqa: E402
from tests.redis_servers import RedisServer, commands_called  # noqa: E402

TTL = 30 * 60
# Commands the store runs only inside its Lua scripts on one server (where the apply
# script also moves the expiry and user indexes): the rest were sent by it.
SCRIPT_ONLY = {
    "hmget",
    "exists",
    "hset",
    "hdel",
    "pexpireat",
    "del",
    "set",
    "publish",
    "zadd",
    "zrem",
}


def measured(server: RedisServer, run: Callable[[], None]) -> dict[str, Any]:
    """Seconds and command counts of ``run``, from a reset INFO commandstats."""
    server.cli("config", "resetstat")
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    calls = commands_called(server)
    calls.pop("config|resetstat", None)
    return {"seconds": seconds, "calls": calls}


def baseline(server: RedisServer, users: int, plan: Plan) -> dict[str, Any]:
    """Write-through, one JSON string per session: GET then SET ... EX per request."""
    client = redis.Redis(port=server.port, decode_responses=True)

    def save(sid: str, data: dict[str, Any]) -> None:
        client.set(f"base:{sid}", json.dumps(data), ex=TTL)

    def create(n: int) -> str:
        sid = f"{n}-{random.getrandbits(64):x}"
        save(sid, {"user": f"user{n}", "cart": [], "ip": CLIENT["ip"], "at": time.time()})
        return sid

    ids = [create(n) for n in range(users)]

    def requests() -> None:
        for kind, slot, value in plan:
            text = client.get(f"base:{ids[slot]}")
            data = json.loads(text) if text else {}
            if kind == END:
                client.delete(f"base:{ids[slot]}")
                ids[slot] = create(slot)
                continue
            if kind == UPDATE:
                data["cart"] = [value]
            data["at"] = time.time()
            save(ids[slot], data)

    result = measured(server, requests)
    client.close()
    return result


def pooled(server: RedisServer, users: int, plan: Plan) -> dict[str, Any]:
    """The service written behind (``write_behind=True``), two app servers on one prefix."""
    url = f"{server.url}?prefix=bench"
    with SessionService(url, write_behind=True) as service, SessionService(url) as peer:
        ids = [service.create_session(f"user{n}", {"cart": []}, CLIENT) for n in range(users)]
        service.force_save()

        def requests() -> None:
            for request in plan:
                serve(service, ids, request)
            service.force_save()

        result = measured(server, requests)
        result["revocation"] = revocation(service, peer, ids[:100])
        result["stats"] = service.stats()
    return result


def revocation(origin: SessionService, peer: SessionService, ids: Sequence[str]) -> list[float]:
    """Seconds from ``end_session`` on one server until the other, which had the session
    cached, refuses it (both in this process, as two app servers)."""
    for sid in ids:
        assert peer.validate_session(sid)
    delays = []
    for sid in ids:
        started = time.perf_counter()
        origin.end_session(sid)
        while peer.validate_session(sid):  # a request every 0.5 ms: the GIL is shared
            if time.perf_counter() - started > 5:
                raise AssertionError("a revocation took over 5 s")
            time.sleep(0.0005)
        delays.append(time.perf_counter() - started)
    return delays


def row(name: str, base: Any, ours: Any, fmt: str, ratio: float | None) -> str:
    ratio_text = "" if ratio is None else f"{ratio:,.1f}x"
    return f"| {name} | {base:{fmt}} | {ours:{fmt}} | {ratio_text} |"


def report(base: dict[str, Any], ours: dict[str, Any], requests: int) -> str:
    base_rps, our_rps = requests / base["seconds"], requests / ours["seconds"]
    base_cmds = sum(base["calls"].values()) / requests
    our_all = sum(ours["calls"].values()) / requests
    our_sent = sum(n for c, n in ours["calls"].items() if c not in SCRIPT_ONLY) / requests
    delays = sorted(ours["revocation"])
    top = ", ".join(f"{c} {n}" for c, n in sorted(ours["calls"].items(), key=lambda x: -x[1]))
    lines = [
        f"{requests:,} requests on redis-server, one client process each.",
        "",
        "| | write-through (GET + SET EX) | pooled_sessions (write-behind) | ratio |",
        "| --- | ---: | ---: | ---: |",
        row("requests per second", base_rps, our_rps, ",.0f", our_rps / base_rps),
        row("Redis commands per request, sent", base_cmds, our_sent, ".3f", base_cmds / our_sent),
        row(
            "Redis commands per request, all (incl. inside scripts)",
            base_cmds,
            our_all,
            ".3f",
            base_cmds / our_all,
        ),
        "",
        f"pooled_sessions commands: {top}.",
        f"Revocation across servers ({len(delays)} ends, peer had each session cached): "
        f"median {statistics.median(delays) * 1000:.1f} ms, "
        f"p99 {delays[int(len(delays) * 0.99) - 1] * 1000:.1f} ms, "
        f"max {delays[-1] * 1000:.1f} ms.",
        f"Flushes: {ours['stats']['flushes']:,}, sessions written: "
        f"{ours['stats']['sessions_written']:,}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args(argv)
    plan = make_plan(args.users, args.requests)
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch) / "redis").start()
        try:
            base = baseline(server, args.users, plan)
            ours = pooled(server, args.users, plan)
        finally:
            server.stop()
    print(report(base, ours, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
