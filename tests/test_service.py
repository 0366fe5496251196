"""SessionService as a caller meets it: bad input, lifecycle, failing stores, threads."""

from __future__ import annotations

import errno
import logging
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest

from pooled_sessions import (
    BackPressureError,
    Reason,
    ServiceClosedError,
    SessionDataError,
    SessionService,
    Settings,
    StoreError,
)
from pooled_sessions.adapters.memory import MemoryStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.clock import FastForwardClock
from pooled_sessions.codec import Changes, Operation, Record, WriteResult, short_id
from tests.backends import ServiceFactory
from tests.waiting import wait_until


class FlakyStore:
    """A memory store whose writes fail (disk full) while ``down`` is set."""

    def __init__(self, url: str = "memory://") -> None:
        self.inner = MemoryStore(StoreURL.parse(url), Settings())
        self.url = url
        self.down = False
        self.writes = 0
        self.failed = 0

    def load(self, session_id: str) -> Record | None:
        return self.inner.load(session_id)

    def load_user(self, username: str) -> Mapping[str, Record]:
        return self.inner.load_user(username)

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        if self.down:
            self.failed += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.writes += 1
        return self.inner.write(operations, now)

    def purge_expired(self, now: float) -> int:
        return self.inner.purge_expired(now)

    def poll(self) -> Changes:
        return self.inner.poll()

    def scan(self) -> Iterator[tuple[str, Record]]:
        return self.inner.scan()

    def count(self) -> int:
        return self.inner.count()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def flaky() -> FlakyStore:
    return FlakyStore(f"memory://flaky{uuid.uuid4().hex}")


@pytest.fixture
def service_on(flaky: FlakyStore) -> Iterator[Any]:
    made: list[SessionService] = []

    def make(**options: Any) -> SessionService:
        options.setdefault("retry_initial_seconds", 0.02)
        options.setdefault("retry_max_seconds", 0.05)
        svc = SessionService(flaky.url, store=flaky, **options)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        flaky.down = False
        svc.shutdown(timeout=2)


def settled(svc: SessionService) -> bool:
    """True when no change waits for, or is being written to, the store."""
    stats = svc.stats()
    return bool(stats["pending_sessions"] == 0 and stats["inflight_sessions"] == 0)


# -- bad input is refused at the call, nothing queued ------------------------------------------


class Opaque:
    pass


BAD_ATTRIBUTES: list[Any] = [
    {"x": Opaque()},
    {"x": {1, 2}},
    {"x": b"bytes"},
    {"x": float("nan")},
    {"x": float("inf")},
    {"x": [1, {"deep": object()}]},
    {1: "non-str key"},
]


@pytest.mark.parametrize("attributes", BAD_ATTRIBUTES, ids=lambda a: repr(a)[:30])
def test_unstorable_attributes_are_refused_at_the_call(
    make_service: ServiceFactory, make_peer: ServiceFactory, attributes: dict[Any, Any]
) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"ok": 1})
    svc.force_save()
    with pytest.raises(SessionDataError):
        svc.create_session("bob", attributes)
    with pytest.raises(SessionDataError):
        svc.update_session(sid, attributes)
    assert svc.stats()["pending_changes"] == 0, "nothing was queued"
    assert svc.sessions_of("bob") == []
    session = svc.get_session(sid)
    assert session is not None and session.attributes == {"ok": 1}
    assert svc.update_session(sid, {"good": True})
    session = make_peer().get_session(sid)
    assert session is not None and session.attributes == {"ok": 1, "good": True}, (
        "the good change is committed, not blocked by the bad one"
    )


def test_oversized_attributes_are_refused(make_service: ServiceFactory) -> None:
    svc = make_service(max_session_bytes=1024)
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        svc.create_session("alice", {"blob": "x" * 2000})
    sid = svc.create_session("alice", {"a": "x" * 600})
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        svc.update_session(sid, {"b": "y" * 600}), "the merged session would be too large"
    assert svc.update_session(sid, {"b": "y" * 600}, remove=["a"])
    session = svc.get_session(sid)
    assert session is not None and set(session.attributes) == {"b"}


def test_wrong_types_are_type_errors(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session("alice")
    calls: list[tuple[Any, tuple[Any, ...], str]] = [
        (svc.create_session, (b"alice",), "username"),
        (svc.create_session, (7,), "username"),
        (svc.create_session, ("alice", ["not", "a", "mapping"]), "attributes"),
        (svc.create_session, ("alice", {}, "203.0.113.7"), "client_info"),
        (svc.validate_session, (None,), "session_id"),
        (svc.validate_session, (12345,), "session_id"),
        (svc.validate_session, (sid, 7), "client_info"),
        (svc.update_session, (sid, "not a mapping"), "attributes"),
        (svc.get_session, (b"id",), "session_id"),
        (svc.end_session, (None,), "session_id"),
        (svc.rotate_session, (1.5,), "session_id"),
        (lambda: svc.rotate_session(sid, username=cast(Any, b"bob")), (), "username"),
        (lambda: svc.rotate_session(sid, attributes=cast(Any, ["a"])), (), "attributes"),
        (lambda: svc.rotate_session(sid, remove="attr"), (), "remove"),
        (svc.sessions_of, (None,), "username"),
    ]
    for method, args, needle in calls:
        with pytest.raises(TypeError, match=needle):
            method(*args)
    with pytest.raises(TypeError, match="remove"):
        svc.update_session(sid, {}, remove="attr")
    with pytest.raises(ValueError, match="username"):
        svc.create_session("")
    with pytest.raises(ValueError, match="username"):
        svc.create_session("a\nb")
    with pytest.raises(ValueError, match="client_info has unknown keys"):
        svc.validate_session(sid, {"addr": "203.0.113.7"})
    with pytest.raises(ValueError, match="not an IP address"):
        svc.validate_session(sid, {"ip": "localhost"})
    assert svc.validate_session(sid).reason is Reason.OK


def test_logs_never_hold_a_whole_session_id(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service()
    with caplog.at_level(logging.DEBUG, logger="session_service"):
        sid = svc.create_session("alice")
        svc.rotate_session(sid)
        svc.end_session(sid)
        svc.force_save()
    assert caplog.records, "the service logs its work"
    assert all(sid not in record.getMessage() for record in caplog.records)
    assert any(short_id(sid) in record.getMessage() for record in caplog.records)


# -- lifecycle -------------------------------------------------------------------------------------


def test_shutdown_is_idempotent_and_closes_every_call(tmp_path: Path) -> None:
    svc = SessionService(tmp_path / "s.json", write_behind=True)
    sid = svc.create_session("alice")
    first = svc.shutdown()
    assert first.complete and first.written == 1 and first.unsaved == ()
    assert svc.shutdown() == first.__class__(0)
    assert not any(
        t.name == "pooled-sessions-flusher" and t.is_alive()
        for t in threading.enumerate()
        if t is getattr(svc, "_thread", None)
    )
    for call in (
        lambda: svc.create_session("bob"),
        lambda: svc.validate_session(sid),
        lambda: svc.update_session(sid, {}),
        lambda: svc.end_session(sid),
        lambda: svc.force_save(),
    ):
        with pytest.raises(ServiceClosedError):
            call()


def test_context_manager(tmp_path: Path) -> None:
    with SessionService(tmp_path / "s.json") as svc:
        sid = svc.create_session("alice", {"a": 1})
    with pytest.raises(ServiceClosedError):
        svc.get_session(sid)
    with SessionService(tmp_path / "s.json") as again:
        session = again.get_session(sid)
        assert session is not None and session.attributes == {"a": 1}


async def test_async_force_save(tmp_path: Path) -> None:
    with SessionService(tmp_path / "s.json", write_behind=True) as svc:
        sid = svc.create_session("alice")
        assert await svc.async_force_save() == 1
        assert svc.stats()["pending_changes"] == 0
        with SessionService(tmp_path / "s.json") as peer:
            assert peer.get_session(sid) is not None


EXIT_SCRIPT = """
import sys
from pooled_sessions import SessionService
svc = SessionService(
    sys.argv[1], write_behind=True, save_delay_seconds=3600, batch_save_threshold=1000
)
print(svc.create_session("alice", {"exit": sys.argv[2]}), flush=True)
if sys.argv[2] == "exit":
    sys.exit(3)
"""


@pytest.mark.parametrize("how", ["return", "exit"])
def test_pending_changes_are_flushed_at_interpreter_exit(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.json"
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(path), how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == (3 if how == "exit" else 0), done.stderr
    sid = done.stdout.strip()
    with SessionService(path) as svc:
        session = svc.get_session(sid)
        assert session is not None and session.attributes == {"exit": how}


# -- a failing store ----------------------------------------------------------------------


def test_shutdown_reports_what_it_could_not_write(service_on: Any, flaky: FlakyStore) -> None:
    svc = service_on(write_behind=True)
    ids = [svc.create_session(f"user{n}") for n in range(3)]
    flaky.down = True
    for sid in ids:
        assert svc.update_session(sid, {"late": True})
    started = time.monotonic()
    report = svc.shutdown(timeout=0.1)
    assert time.monotonic() - started < 2.0, "the time limit is kept"
    assert not report.complete
    assert sorted(report.unsaved) == sorted(sid[:8] + "…" for sid in ids)
    assert report.error is not None and "No space left" in report.error
    assert all(sid not in " ".join(report.unsaved) for sid in ids), "ids are shortened"


def test_a_failed_flush_keeps_everything_and_recovers(
    service_on: Any, flaky: FlakyStore, clock: FastForwardClock
) -> None:
    svc = service_on(
        write_behind=True,
        batch_save_threshold=1,
        retry_initial_seconds=1,
        retry_max_seconds=2,
        clock=clock,
    )
    flaky.down = True
    sid = svc.create_session("alice", {"a": 1})
    with pytest.raises(StoreError, match="No space left"):
        svc.force_save()
    assert svc.update_session(sid, {"b": 2})
    for failures in (2, 3):
        assert flaky.failed == failures - 1, "no retry before the backoff has passed"
        clock.advance(2)
        assert wait_until(partial(lambda n: flaky.failed >= n, failures)), "it keeps retrying"
    stats = svc.stats()
    assert stats["flush_failures"] >= 3 and stats["flush_retries"] >= 2
    assert "No space left" in stats["last_error"]
    assert svc.validate_session(sid), "reads are served while the store is down"
    flaky.down = False
    clock.advance(2)
    assert wait_until(lambda: settled(svc))
    record = flaky.load(sid)
    assert record is not None and record["attributes"] == {"a": 1, "b": 2}


def test_back_pressure_then_recovery_loses_nothing(service_on: Any, flaky: FlakyStore) -> None:
    svc = service_on(write_behind=True, max_pending_sessions=5, backpressure_timeout_seconds=0.1)
    flaky.down = True
    accepted = {svc.create_session(f"user{n}", {"n": n}): n for n in range(5)}
    with pytest.raises(StoreError):
        svc.force_save()
    started = time.monotonic()
    with pytest.raises(BackPressureError, match="5 sessions are waiting"):
        svc.create_session("one-too-many")
    assert time.monotonic() - started >= 0.1, "the caller waited backpressure_timeout_seconds"
    for sid in accepted:
        assert svc.update_session(sid, {"more": True}), "pending sessions still take changes"
    assert svc.stats()["pending_sessions"] <= 5
    flaky.down = False
    assert wait_until(lambda: settled(svc))
    for sid, n in accepted.items():
        record = flaky.load(sid)
        assert record is not None and record["attributes"] == {"n": n, "more": True}
    assert svc.create_session("now-fits")


def test_back_pressure_waits_for_room_that_comes(service_on: Any, flaky: FlakyStore) -> None:
    svc = service_on(write_behind=True, max_pending_sessions=2, backpressure_timeout_seconds=5)
    flaky.down = True
    for n in range(2):
        svc.create_session(f"user{n}")
    threading.Timer(0.2, lambda: setattr(flaky, "down", False)).start()
    started = time.monotonic()
    sid = svc.create_session("patient")
    assert 0.1 < time.monotonic() - started < 4.0
    svc.force_save()
    assert flaky.load(sid) is not None


def test_write_through_mode_writing_behind(service_on: Any, flaky: FlakyStore) -> None:
    svc = service_on(write_behind=True, batch_save_threshold=1, save_delay_seconds=0)
    assert svc.settings.write_through
    sid = svc.create_session("alice", {"a": 1})
    assert flaky.load(sid) is not None, "written before create_session returned"
    assert svc.update_session(sid, {"a": 2})
    record = flaky.load(sid)
    assert record is not None and record["attributes"] == {"a": 2}
    assert svc.end_session(sid)
    assert flaky.load(sid) is None
    writes = flaky.writes
    other = svc.create_session("bob")
    for _ in range(20):
        assert svc.validate_session(other)
    assert flaky.writes == writes + 1, "reads within the touch step write nothing"
    flaky.down = True
    for _ in range(3):  # every call says so, also during the backoff
        with pytest.raises(StoreError, match="No space left"):
            svc.update_session(other, {"lost?": False})
    assert svc.validate_session(other), "a read is still served"
    flaky.down = False
    svc.update_session(other, {"after": True})
    record = flaky.load(other)
    assert record is not None and record["attributes"] == {"lost?": False, "after": True}


def test_write_through_mode(service_on: Any, flaky: FlakyStore, clock: FastForwardClock) -> None:
    svc = service_on(save_delay_seconds=0, expire_minutes=30, clock=clock)
    assert svc.settings.write_through and svc.settings.commits
    sid = svc.create_session("alice", {"a": 1})
    assert flaky.load(sid) is not None, "written before create_session returned"
    writes = flaky.writes
    for _ in range(20):
        assert svc.validate_session(sid)
    assert flaky.writes == writes, "reads within the touch step write nothing"
    clock.advance(61)
    assert svc.validate_session(sid)
    assert flaky.writes == writes + 1, "a touch past the step is written before it returns"
    flaky.down = True
    for _ in range(3):  # every call says so, also during the backoff
        with pytest.raises(StoreError, match="No space left"):
            svc.update_session(sid, {"lost?": True})
    clock.advance(61)
    assert svc.validate_session(sid), "a read is served; its touch is left to the retries"
    flaky.down = False
    assert svc.update_session(sid, {"after": True})
    record = flaky.load(sid)
    assert record is not None and record["attributes"] == {"a": 1, "after": True}, (
        "the changes that failed were undone, not written later"
    )


# -- threads -----------------------------------------------------------------------------


def test_eight_threads_hammering_one_service(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service(save_delay_seconds=0.01, batch_save_threshold=5)
    errors: list[BaseException] = []
    expected: dict[str, dict[str, Any] | None] = {}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        rng = random.Random(n)
        mine: dict[str, dict[str, Any]] = {}
        ended: list[str] = []
        try:
            start.wait()
            for step in range(300):
                roll = rng.random()
                if roll < 0.15 or not mine:
                    sid = svc.create_session(f"user{n}", {"t": n})
                    mine[sid] = {"t": n}
                elif roll < 0.75:
                    sid = rng.choice(list(mine))
                    result = svc.validate_session(sid)
                    assert result, result.reason
                    assert result.session is not None
                    assert result.session.attributes == mine[sid]
                elif roll < 0.95:
                    sid = rng.choice(list(mine))
                    assert svc.update_session(sid, {"step": step})
                    mine[sid]["step"] = step
                else:
                    sid = rng.choice(list(mine))
                    assert svc.end_session(sid)
                    del mine[sid]
                    ended.append(sid)
            with lock:
                expected.update(mine)
                expected.update(dict.fromkeys(ended))
        except BaseException as exc:  # collected and reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    svc.force_save()
    peer = make_peer()
    for sid, attributes in expected.items():
        session = peer.get_session(sid)
        if attributes is None:
            assert session is None, "an ended session stays ended"
        else:
            assert session is not None and session.attributes == attributes
    for n in range(8):
        alive = {sid for sid, a in expected.items() if a is not None and a["t"] == n}
        assert set(peer.sessions_of(f"user{n}")) == alive
    assert svc.stats()["flushes"] >= 2


def race(first: Callable[[], object], second: Callable[[], object]) -> None:
    """Run two calls in two threads released together."""
    go = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            go.wait()
            call()
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[0]


def test_update_racing_end_never_resurrects(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service(save_delay_seconds=0.005, batch_save_threshold=2)
    rng = random.Random(2)
    for round_ in range(60):
        sid = svc.create_session("racer", {"round": round_})
        if round_ % 2:
            svc.force_save()
        outcome: dict[str, Any] = {}

        def updater(sid: str = sid, outcome: dict[str, Any] = outcome) -> None:
            count = 0
            while count < 10_000 and svc.update_session(sid, {"count": count}):
                count += 1
            outcome["updates"] = count

        def ender(sid: str = sid, outcome: dict[str, Any] = outcome) -> None:
            time.sleep(rng.random() * 0.002)
            outcome["ended"] = svc.end_session(sid)

        race(updater, ender)
        assert outcome["ended"] is True
        assert outcome["updates"] < 10_000
        assert svc.get_session(sid) is None
        assert svc.update_session(sid, {"after": 1}) is False
    svc.force_save()
    peer = make_peer()
    assert peer.sessions_of("racer") == []


def test_update_on_one_service_racing_end_on_a_peer(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    left = make_service(save_delay_seconds=0.005, batch_save_threshold=1)
    right = make_peer(save_delay_seconds=0.005, batch_save_threshold=1)
    ids = []
    for round_ in range(20):
        sid = left.create_session("racer", {"round": round_})
        left.force_save()
        assert right.validate_session(sid)

        def updater(sid: str = sid) -> None:
            for count in range(30):
                left.update_session(sid, {"count": count})

        def ender(sid: str = sid) -> None:
            right.end_session(sid)
            right.force_save()

        race(updater, ender)
        ids.append(sid)
    left.force_save()
    right.force_save()
    judge = make_peer()
    assert [sid for sid in ids if judge.get_session(sid) is not None] == []
    assert judge.sessions_of("racer") == []
