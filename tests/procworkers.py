"""Code run in child processes by the file store tests (kept free of pytest imports).

``python -m tests.procworkers writer PATH`` creates sessions forever, printing each id
only after `force_save` returned for it, until it is killed.
``python -m tests.procworkers confirmed URL NAME COUNT`` creates COUNT sessions, each
saved and printed once `force_save` (or `async_force_save` for ``aiofile://``) returned.
``python -m tests.procworkers unlinker PATH`` deletes PATH every few milliseconds until
its standard input closes.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from typing import Any

from pooled_sessions import AsyncSessionService, SessionService

SESSIONS_PER_PROCESS = 40
CROSS_WRITES = 5
ENDED_PER_PROCESS = 5


def share(path: str, index: int, out: Any, into: Any) -> None:
    """One of several processes on one file: create, then read and write the others'."""
    problems: list[str] = []
    svc = SessionService(
        path, save_delay_seconds=0.02, batch_save_threshold=5, sync_interval_seconds=0.05
    )
    mine = []
    for n in range(SESSIONS_PER_PROCESS):
        sid = svc.create_session(f"p{index}", {"owner": index, "n": n})
        mine.append(sid)
        if n % 3 == 0:
            svc.update_session(sid, {"touched": True})
    svc.force_save()
    out.put(("ids", index, mine))
    everyone: dict[int, list[str]] = into.get(timeout=120)
    for other, ids in everyone.items():
        if other == index:
            continue
        for sid in ids:
            result = svc.validate_session(sid)
            if not result or result.session is None or result.session.username != f"p{other}":
                problems.append(f"p{index} cannot see {sid[:8]} of p{other}: {result.reason}")
        listed = svc.sessions_of(f"p{other}")
        if set(listed) != set(ids):
            problems.append(f"p{index} lists {len(listed)} sessions of p{other}, not {len(ids)}")
        for sid in ids[:CROSS_WRITES]:
            if not svc.update_session(sid, {f"seen_by_{index}": True}):
                problems.append(f"p{index} could not update {sid[:8]} of p{other}")
    out.put(("checked", index, problems))
    into.get(timeout=120)  # every process has looked at the others' sessions: end some
    problems = []
    for sid in mine[-ENDED_PER_PROCESS:]:
        if not svc.end_session(sid):
            problems.append(f"p{index} could not end its own {sid[:8]}")
    report = svc.shutdown()
    if not report.complete:
        problems.append(f"p{index} shutdown left {report.unsaved}: {report.error}")
    out.put(("done", index, problems))


def writer(path: str) -> None:
    """Create sessions until killed; print ``id n`` only once `force_save` confirmed it."""
    svc = SessionService(path, save_delay_seconds=3600, batch_save_threshold=10**6)
    pad = "x" * 1024
    n = 0
    while True:
        sid = svc.create_session("writer", {"n": n, "pad": pad})
        svc.force_save()
        print(sid, n, flush=True)
        n += 1


def confirmed(url: str, name: str, count: int) -> None:
    """Create ``count`` sessions, printing each id once the store confirmed it."""
    if url.startswith("aiofile://"):
        asyncio.run(_confirmed_async(url, name, count))
        return
    with SessionService(url, save_delay_seconds=3600, batch_save_threshold=10**6) as svc:
        for n in range(count):
            sid = svc.create_session(name, {"n": n})
            svc.force_save()
            print(sid, flush=True)


async def _confirmed_async(url: str, name: str, count: int) -> None:
    async with AsyncSessionService(url, save_delay_seconds=3600) as svc:
        for n in range(count):
            sid = await svc.create_session(name, {"n": n})
            await svc.async_force_save()
            print(sid, flush=True)


def unlinker(path: str) -> None:
    """Delete ``path`` every 1-4 ms until standard input closes; print how often it did."""
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    rng, removed = random.Random(11), 0
    while not stop.is_set():
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
        time.sleep(rng.uniform(0.001, 0.004))
    print(removed, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2])
    elif sys.argv[1] == "confirmed":
        confirmed(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "unlinker":
        unlinker(sys.argv[2])
