"""Code run in child processes by the file store tests and tests/test_processes.py (kept
free of pytest imports).

``python -m tests.procworkers writer PATH`` creates sessions forever, printing each id
only after `force_save` returned for it, until it is killed.
``python -m tests.procworkers appender PATH BOUND PAD`` does the same with one
`JsonFileStore.write` per session, the journal folded past BOUND bytes.
``python -m tests.procworkers crash PATH POINT`` writes three sessions, then kills itself
with SIGKILL at POINT of the fourth write (see `CRASH_POINTS`).
``python -m tests.procworkers compactor PATH FIRST COUNT`` writes COUNT sessions, then
folds the journal into a new snapshot.
``python -m tests.procworkers confirmed URL NAME COUNT`` creates COUNT sessions, each
saved and printed once `force_save` (or `async_force_save` for ``aiofile://``) returned.
``python -m tests.procworkers unlinker PATH`` deletes PATH every few milliseconds until
its standard input closes.
``python -m tests.procworkers fork URL MODE`` creates a service, forks, uses it in both
processes and prints what each saw (`forked`). `serve` runs the commands of
tests/test_processes.py in one process of several sharing a store.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pooled_sessions import AsyncSessionService, SessionService, adapters
from pooled_sessions.adapters.file import fsio, mirror
from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Upsert, encode_attributes
from pooled_sessions.config import Settings

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


def upsert(n: int, pad: int = 0) -> Upsert:
    """A new session ``n``, its attributes ``{"n": n}`` (and ``pad`` characters)."""
    now = time.time()
    values: dict[str, Any] = {"n": n, "pad": "x" * pad} if pad else {"n": n}
    attributes = encode_attributes(values)
    return Upsert(
        session_id=f"s{n:08d}",
        username=f"user{n % 7}",
        attributes=attributes,
        changed=frozenset(attributes),
        removed=frozenset(),
        ip=None,
        user_agent=None,
        created_at=now,
        last_accessed_at=now,
        expires_at=now + 3600,
        absolute_expires_at=None,
        created=True,
    )


def open_store(path: str) -> JsonFileStore:
    return JsonFileStore(StoreURL.parse(path), Settings())


def fold_past(bound: int) -> None:
    """Fold the journal into a new snapshot once it passes ``bound`` bytes."""
    mirror.JOURNAL_MIN_BYTES, mirror.JOURNAL_SHARE = bound, 0.0


def appender(path: str, bound: int, pad: int) -> None:
    """One session per write() until killed; print ``id n`` once write() returned."""
    fold_past(bound)
    store = open_store(path)
    first = store.count()
    for n in range(first, first + 10**9):
        op = upsert(n, pad)
        store.write([op], time.time())
        print(op.session_id, n, flush=True)


CRASH_POINTS = ("mid-append", "before-fdatasync", "before-rename", "between-renames")


def crash(path: str, point: str) -> None:
    """Write sessions 0-2 (printing each), then die by SIGKILL at ``point`` of writing 3."""
    store = open_store(path)
    for n in range(3):
        store.write([upsert(n)], time.time())
        print(f"s{n:08d}", n, flush=True)
    if point in ("before-rename", "between-renames"):
        fold_past(0)  # the next write folds the journal into a new snapshot
    real_write, real_replace = fsio.write_all, os.replace

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def write_then_die(fd: int, data: bytes) -> None:
        if point == "mid-append":
            os.write(fd, data[: len(data) // 2])
            die()
        real_write(fd, data)
        if point == "before-fdatasync":
            die()

    def replace_then_die(source: str, target: str) -> None:
        if point == "before-rename":
            die()
        real_replace(source, target)
        if target == path:  # the snapshot is in place, its journal not yet
            die()

    fsio.write_all = write_then_die
    os.replace = replace_then_die  # type: ignore[assignment]
    store.write([upsert(3)], time.time())
    raise SystemExit(f"no crash at {point}")


def compactor(path: str, first: int, count: int) -> None:
    """Write ``count`` sessions from ``first``, one write each, then compact; print the
    snapshot's generation."""
    store = open_store(path)
    for n in range(first, first + count):
        store.write([upsert(n)], time.time())
    store.compact()
    with open(path, "rb") as snapshot:
        print(json.load(snapshot)["generation"], flush=True)


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


# -- several processes on one store: commands from the test ------------------------------------

Call = Callable[..., Any]


def _created(call: Call, username: str, attributes: dict[str, Any]) -> str:
    sid: str = call("create_session", username, attributes)
    return sid


def _validated(call: Call, session_id: str) -> list[Any]:
    """``[valid, reason, attributes or None]``."""
    result = call("validate_session", session_id)
    return [bool(result), result.reason.value, result.session and result.session.attributes]


def _appended(call: Call, session_id: str, item: int, wait: float) -> list[Any]:
    """Read the cart, append ``item``, write it back. The cart is expected to hold ``item``
    entries already; with ``wait`` it is read again until it does, up to ``wait`` seconds.
    Returns ``[length read, reads again, seconds waited]``."""
    started, again = time.monotonic(), 0
    while True:
        valid, reason, attributes = _validated(call, session_id)
        if not valid or attributes is None:
            raise RuntimeError(f"the cart's session is not valid here: {reason}")
        cart: list[int] = attributes["cart"]
        if len(cart) == item or time.monotonic() - started >= wait:
            break
        again += 1
        time.sleep(0.001)
    if not call("update_session", session_id, {"cart": [*cart, item]}):
        raise RuntimeError("the cart's session ended under the update")
    return [len(cart), again, time.monotonic() - started if again else 0.0]


def _refused_within(call: Call, session_id: str, wait: float) -> list[Any] | None:
    """``[reads again, seconds]`` until ``session_id`` is refused here (``[0, 0.0]``: at the
    first call), None if it is still valid after ``wait`` seconds."""
    started, again = time.monotonic(), 0
    while _validated(call, session_id)[0]:
        if time.monotonic() - started >= wait:
            return None
        again += 1
        time.sleep(0.0005)
    return [again, time.monotonic() - started if again else 0.0]


def _ended(call: Call, session_id: str) -> bool:
    return bool(call("end_session", session_id))


def _stopped(call: Call) -> bool:
    return bool(call("shutdown").complete)


COMMANDS: dict[str, Callable[..., Any]] = {
    "create": _created,
    "validate": _validated,
    "append": _appended,
    "refused_within": _refused_within,
    "end": _ended,
    "stop": _stopped,
}


def serve(url: str, asynchronous: bool, inbox: Any, outbox: Any) -> None:
    """One of several processes on one store: run each command of ``inbox`` with a service
    of its own (`AsyncSessionService` on a loop of this process when ``asynchronous``) and
    put ``("ok", result)`` or ``("error", message)`` on ``outbox``."""
    call: Call
    if asynchronous:
        loop = asyncio.new_event_loop()
        service: Any = loop.run_until_complete(_opened(url))

        def call(name: str, *args: Any) -> Any:
            return loop.run_until_complete(getattr(service, name)(*args))
    else:
        service = SessionService(url)

        def call(name: str, *args: Any) -> Any:
            return getattr(service, name)(*args)

    while True:
        command, *args = inbox.get(timeout=120)
        try:
            outbox.put(("ok", COMMANDS[command](call, *args)))
        except Exception as exc:  # the test reports it
            outbox.put(("error", f"{type(exc).__name__}: {exc}"))
        if command == "stop":
            return


async def _opened(url: str) -> AsyncSessionService:
    return AsyncSessionService(url)


# -- fork() after the service was created --------------------------------------------------------


def forked(url: str, mode: str) -> dict[str, Any]:
    """Create a service, fork, use it in both processes; what each saw.

    ``mode``: ``commit`` or ``write-behind`` (`SessionService`; the parent owes the store a
    creation when it forks), or ``async`` (`AsyncSessionService`, first used on a loop of
    the parent). The child reports through a pipe and exits through the interpreter, so
    its atexit hooks run as a worker's would.
    """
    reader = adapters.open_store(url.replace("aiofile://", "file://"), Settings())
    if mode == "async":
        return _forked_async(url, reader)
    svc = SessionService(
        url,
        write_behind=mode == "write-behind",
        save_delay_seconds=3600,
        batch_save_threshold=10**6,
    )
    shared = svc.create_session("parent", {"n": 0})
    svc.force_save()
    owed = svc.create_session("parent", {"owed": True})  # still owed when written behind
    assert svc.validate_session(shared)  # cached here before the fork
    child, exit_code = _fork(lambda: _child(svc, shared, owed))
    seen: dict[str, Any] = {"child": child, "child_exit": exit_code}
    seen["owed_stored_before_the_parent_flushed"] = reader.load(owed) is not None
    svc.force_save()
    seen["owed_stored"] = reader.load(owed) is not None
    seen["child_end_stored"] = reader.load(child["ended"]) is None
    mine = svc.create_session("parent", {"after": True})
    seen["parent_works"] = bool(svc.validate_session(mine)) and svc.force_save() >= 0
    seen["parent_works"] &= reader.load(mine) is not None
    seen["parent_sees_the_child_change"] = _within(
        3.0, lambda: (s := svc.get_session(shared)) is not None and s.attributes.get("child")
    )
    seen["parent_refuses_the_child_end"] = not svc.validate_session(child["ended"])
    seen["parent_shutdown_complete"] = svc.shutdown().complete
    reader.close()
    return seen


def _child(svc: SessionService, shared: str, owed: str) -> dict[str, Any]:
    mine = svc.create_session("child", {"n": 1})
    session = svc.get_session(shared)
    return {
        "creates": bool(svc.validate_session(mine)),
        "reads_the_store": session is not None and session.attributes == {"n": 0},
        "sees_owed": svc.get_session(owed) is not None,
        "updates": svc.update_session(shared, {"child": True}),
        "ends": svc.end_session(mine) and not svc.validate_session(mine),
        "ended": mine,
    }


def _forked_async(url: str, reader: Any) -> dict[str, Any]:
    loop = asyncio.new_event_loop()  # the parent's loop, not running while it forks
    svc = AsyncSessionService(url)
    shared = loop.run_until_complete(svc.create_session("parent", {"n": 0}))  # bound to it

    async def work() -> dict[str, Any]:
        mine = await svc.create_session("child")
        seen = {
            "creates": bool(await svc.validate_session(mine)),
            "reads_the_store": bool(await svc.validate_session(shared)),
            "ends": await svc.end_session(mine),
            "ended": mine,
        }
        await svc.shutdown()
        return seen

    child, exit_code = _fork(lambda: asyncio.run(work()))
    seen: dict[str, Any] = {"child": child, "child_exit": exit_code}
    seen["child_end_stored"] = reader.load(child["ended"]) is None
    seen["shared_stored"] = reader.load(shared) is not None
    seen["parent_works"] = loop.run_until_complete(svc.update_session(shared, {"n": 1}))
    seen["parent_shutdown_complete"] = loop.run_until_complete(svc.shutdown()).complete
    loop.close()
    reader.close()
    return seen


def _fork(work: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """Run ``work`` in a forked child; what it returned and the child's exit code."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            report = work()
        except BaseException as exc:  # reported to the parent, and the child fails
            report = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as out:
            json.dump(report, out)
        sys.exit(0 if "error" not in report else 1)
    os.close(write_end)
    with os.fdopen(read_end) as received:
        report = json.loads(received.read() or "{}")
    _, status = os.waitpid(pid, 0)
    return report, os.waitstatus_to_exitcode(status)


def _within(seconds: float, check: Callable[[], object]) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "writer":
        writer(args[0])
    elif command == "appender":
        appender(args[0], int(args[1]), int(args[2]))
    elif command == "crash":
        crash(args[0], args[1])
    elif command == "compactor":
        compactor(args[0], int(args[1]), int(args[2]))
    elif command == "confirmed":
        confirmed(args[0], args[1], int(args[2]))
    elif command == "unlinker":
        unlinker(args[0])
    elif command == "fork":
        print(json.dumps(forked(args[0], args[1])))
