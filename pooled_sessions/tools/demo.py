"""``pooled-sessions demo``: a short simulated web workload on the default JSON file store,
written behind (``write_behind=True``: one process owns the file), to show what batching
saves."""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Sequence

from pooled_sessions.service import SessionService


def build_parser() -> argparse.ArgumentParser:
    """The demo's own parser (``pooled-sessions demo`` hands it its arguments)."""
    parser = argparse.ArgumentParser(prog="pooled-sessions demo", description=run.__doc__)
    parser.add_argument(
        "--path", help="sessions file to write (default: one in a temporary directory)"
    )
    parser.add_argument("--users", type=int, default=500, help="users logged in (default 500)")
    parser.add_argument(
        "--requests", type=int, default=20_000, help="requests served (default 20,000)"
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="random seed: the same seed, the same run (default 7)"
    )
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Log users in, serve requests (89% validate, 10% update, 1% logout), report the writes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.users < 1 or args.requests < 1:
        parser.error("--users and --requests must be positive")
    with tempfile.TemporaryDirectory() as scratch:
        path = args.path or os.path.join(scratch, "sessions.json")
        return _workload(path, args.users, args.requests, random.Random(args.seed))


def _workload(path: str, users: int, requests: int, rng: random.Random) -> int:
    print(f"sessions file: {path}")
    started = time.perf_counter()
    with SessionService(path, expire_minutes=30, write_behind=True) as service:
        ids = [
            service.create_session(f"user{n}", {"cart": []}, {"ip": f"198.51.100.{n % 250 + 1}"})
            for n in range(users)
        ]
        mutations = users
        for _ in range(requests):
            slot = rng.randrange(users)
            roll = rng.random()
            if roll < 0.89:
                service.validate_session(ids[slot])
            elif roll < 0.99:
                service.update_session(ids[slot], {"cart": [rng.randrange(100)]})
                mutations += 1
            else:
                service.end_session(ids[slot])
                ids[slot] = service.create_session(f"user{slot}", {"cart": []})
                mutations += 2
        service.force_save()
        stats = service.stats()
    elapsed = time.perf_counter() - started
    total = users + requests
    flushes = stats["flushes"]
    with SessionService(path) as reopened:
        alive = sum(1 for sid in ids if reopened.get_session(sid) is not None)
    print("mode:                   write_behind=True (the default commits each change)")
    print(f"requests served:        {total:>9,} in {elapsed:.2f} s ({total / elapsed:,.0f}/s)")
    print(f"changes made:           {mutations:>9,}")
    print(f"file writes (flushes):  {flushes:>9,}  ({flushes / total:.3%} of requests)")
    print(f"write-through would do: {mutations:>9,}  ({mutations / total:.1%} of requests)")
    print(f"writes saved:           {1 - flushes / mutations:>9.1%}")
    print(f"sessions after reopen:  {alive:>9,} of {users:,} (all still valid)")
    return 0 if alive == users else 1
