"""Faults of the file system, injected into ``pooled_sessions.adapters.file.fsio``.

The tests run as root, so chmod cannot stage a full disk or a read-only directory; each
fault is an OSError with the errno the kernel would give, raised where it would arise.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import AsyncSessionService, SessionService, StoreUnavailableError
from pooled_sessions.adapters.file import fsio, mirror
from pooled_sessions.clock import FastForwardClock
from tests.filekit import journal_of, stored, temp_files
from tests.waiting import wait_until


class Fault:
    """Wrap ``fsio.<name>`` so its next ``times`` calls raise OSError(``code``)."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        name: str,
        code: int,
        times: int = 10**9,
        *,
        before: Callable[..., Any] | None = None,
    ) -> None:
        self.real: Callable[..., Any] = getattr(fsio, name)
        self.code = code
        self.left = times
        self.calls: list[tuple[Any, ...]] = []
        self.before = before
        monkeypatch.setattr(fsio, name, self)

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        if self.left > 0:
            self.left -= 1
            if self.before is not None:
                self.before(*args)
            raise OSError(self.code, os.strerror(self.code))
        return self.real(*args)

    def heal(self) -> None:
        self.left = 0


def populate(svc: SessionService) -> dict[str, dict[str, Any]]:
    """Some saved sessions, then unsaved changes; the state every reopen must show."""
    expected = {svc.create_session(f"user{n}", {"n": n}): {"n": n} for n in range(5)}
    svc.force_save()
    first, second = list(expected)[:2]
    svc.update_session(first, {"late": True})
    expected[first] = {"n": 0, "late": True}
    expected[svc.create_session("newcomer", {"fresh": 1})] = {"fresh": 1}
    assert svc.end_session(second)
    del expected[second]
    return expected


def assert_file_holds(path: Path, expected: dict[str, dict[str, Any]]) -> None:
    with SessionService(path) as svc:
        for sid, attributes in expected.items():
            session = svc.get_session(sid)
            assert session is not None and session.attributes == attributes
        assert svc.stats()["live_sessions"] == len(expected)


def unsettled(svc: SessionService) -> int:
    """Sessions with changes the store has not confirmed."""
    stats = svc.stats()
    return int(stats["pending_sessions"] + stats["inflight_sessions"])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


def compact_every_write(patch: pytest.MonkeyPatch) -> None:
    """Make every write fold the journal into a new snapshot (the atomic replace)."""
    patch.setattr(mirror, "JOURNAL_MIN_BYTES", 0)
    patch.setattr(mirror, "JOURNAL_SHARE", 0.0)


def saved_files(path: Path) -> tuple[bytes, bytes]:
    return path.read_bytes(), journal_of(path).read_bytes()


@pytest.fixture
def service(path: Path) -> Iterator[SessionService]:
    svc = SessionService(
        path, write_behind=True, save_delay_seconds=3600, retry_initial_seconds=3600
    )
    yield svc
    svc.shutdown(timeout=1)


FAULTS = [  # (fsio function, errno, words in the error, the write that meets it)
    ("write_all", errno.ENOSPC, "disk full", "append"),
    ("stat_or_none", errno.EIO, "I/O error", "append"),
    ("write_all", errno.ENOSPC, "disk full", "snapshot"),
    ("open_temp", errno.ENOSPC, "disk full", "snapshot"),
    ("open_temp", errno.EACCES, "permission denied", "snapshot"),
    ("open_temp", errno.EROFS, "read-only file system", "snapshot"),
    ("fsync", errno.EIO, "I/O error", "snapshot"),
    ("sync_directory", errno.EIO, "I/O error", "snapshot"),
]


@pytest.mark.parametrize(
    ("name", "code", "words", "kind"), FAULTS, ids=[f"{k}-{n}-{w}" for n, _, w, k in FAULTS]
)
def test_a_failed_flush_keeps_its_changes_and_recovers(
    service: SessionService, path: Path, name: str, code: int, words: str, kind: str
) -> None:
    expected = populate(service)
    saved = saved_files(path)
    with pytest.MonkeyPatch.context() as patch:
        if kind == "snapshot":
            compact_every_write(patch)
        fault = Fault(patch, name, code)
        for _ in range(2):
            with pytest.raises(StoreUnavailableError, match=words):
                service.force_save()
        assert fault.calls, "the fault was reached"
        stats = service.stats()
        assert stats["pending_sessions"] == 3 and stats["flushes"] == 1
        assert stats["flush_failures"] == 2 and words in stats["last_error"]
        if name != "sync_directory":  # that one fails after the rename, the data in place
            assert saved_files(path) == saved, "the old files are untouched"
        assert temp_files(path.parent) == []
        for sid, attributes in expected.items():
            session = service.get_session(sid)
            assert session is not None and session.attributes == attributes
    assert service.force_save() == 3
    assert service.stats()["pending_sessions"] == 0
    assert_file_holds(path, expected)


def test_a_failed_read_of_another_process_write_loses_nothing(
    service: SessionService, path: Path
) -> None:
    expected = populate(service)
    with SessionService(path) as other:
        theirs = other.create_session("other", {"from": "other"})
    expected[theirs] = {"from": "other"}
    with pytest.MonkeyPatch.context() as patch:
        fault = Fault(patch, "read_pinned", errno.EIO)
        with pytest.raises(StoreUnavailableError, match=r"cannot read .*I/O error"):
            service.force_save()
        assert fault.calls and service.stats()["pending_sessions"] == 3
    assert service.force_save() == 3
    assert_file_holds(path, expected)


def test_after_a_failed_fdatasync_the_next_write_starts_a_new_snapshot(
    service: SessionService, path: Path
) -> None:
    """A journal whose fdatasync failed may hold pages the kernel will never write: the
    retry does not append to it but writes everything afresh (temp file, fsync, rename)."""
    expected = populate(service)
    generation = json.loads(path.read_bytes())["generation"]
    with pytest.MonkeyPatch.context() as patch:
        Fault(patch, "fdatasync", errno.EIO, times=1)
        with pytest.raises(StoreUnavailableError, match="I/O error"):
            service.force_save()
    assert service.force_save() == 3
    assert json.loads(path.read_bytes())["generation"] == generation + 1
    assert stored(path).lines == 0
    service.update_session(next(iter(expected)), {"after": True})
    service.force_save()
    assert stored(path).lines == 1, "then appends go on as before"
    expected[next(iter(expected))]["after"] = True
    assert_file_holds(path, expected)


async def test_asyncio_after_a_failed_fdatasync_the_call_fails_and_a_new_snapshot_follows(
    path: Path,
) -> None:
    """The asyncio store appends, lets the lock file go and flushes in one worker-thread
    hop: a failed flush fails the call and leaves the lock file free, and the next write
    does not trust that journal."""
    async with AsyncSessionService(f"aiofile://{path}") as svc:
        sid = await svc.create_session("alice", {"n": 0})
        generation = json.loads(path.read_bytes())["generation"]
        with pytest.MonkeyPatch.context() as patch:
            Fault(patch, "fdatasync", errno.EIO, times=1)
            with pytest.raises(StoreUnavailableError, match="I/O error"):
                await svc.update_session(sid, {"n": 1})
        lock = fsio.LockFile(str(path))
        assert lock.take(wait=False), "the lock file was let go"
        lock.release()
        lock.close()
        assert await svc.update_session(sid, {"n": 2})
    assert json.loads(path.read_bytes())["generation"] == generation + 1
    assert stored(path).lines == 0, "a new snapshot, not a line on the journal that failed"
    assert_file_holds(path, {sid: {"n": 2}})


def test_the_flusher_retries_with_backoff_until_the_disk_has_room(
    path: Path, clock: FastForwardClock
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        fault = Fault(patch, "write_all", errno.ENOSPC, times=3)
        with SessionService(
            path,
            write_behind=True,
            save_delay_seconds=1,
            retry_initial_seconds=1,
            retry_max_seconds=2,
            clock=clock,
        ) as svc:
            expected = {svc.create_session(f"u{n}", {"n": n}): {"n": n} for n in range(4)}
            for failures in (1, 2, 3):  # past the save delay, then past each backoff
                clock.advance(2)
                assert wait_until(partial(lambda n: svc.stats()["flush_failures"] == n, failures))
                assert unsettled(svc) == 4
            clock.advance(2)
            assert wait_until(lambda: not unsettled(svc))
            stats = svc.stats()
            assert stats["pending_sessions"] == 0 and fault.left == 0
            assert stats["flush_failures"] == 3 and stats["flush_retries"] == 3
            assert stats["flushes"] >= 1
    assert_file_holds(path, expected)


def test_a_failed_fsync_is_never_retried_on_the_same_descriptor(
    service: SessionService, path: Path
) -> None:
    expected = populate(service)
    temps: list[str] = []
    real_open_temp = fsio.open_temp

    def recording_open_temp(target: str) -> tuple[int, str]:
        fd, name = real_open_temp(target)
        temps.append(name)
        return fd, name

    failed_fds: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        compact_every_write(patch)
        patch.setattr(fsio, "open_temp", recording_open_temp)
        fault = Fault(patch, "fsync", errno.EIO, times=1, before=failed_fds.append)
        with pytest.raises(StoreUnavailableError, match="I/O error"):
            service.force_save()
        with pytest.raises(OSError) as closed:
            os.fstat(failed_fds[0])
        assert closed.value.errno == errno.EBADF, "the descriptor whose fsync failed is closed"
        assert not os.path.exists(temps[0]), "its temp file is gone"
        assert service.stats()["flushes"] == 1, "the failed flush is not reported done"
        assert service.force_save() == 3
        snapshots = [name for name in temps if ".journal." not in name]
        assert len(snapshots) == 2 and snapshots[0] != snapshots[1], "the retry wrote a fresh one"
        assert len(fault.calls) >= 2
    assert_file_holds(path, expected)


@pytest.mark.parametrize("kind", ["append", "snapshot"])
def test_disk_full_halfway_through_a_write(service: SessionService, path: Path, kind: str) -> None:
    expected = populate(service)
    saved = saved_files(path)

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        if kind == "snapshot":
            compact_every_write(patch)
        patch.setattr(fsio, "write_all", half_then_full)
        with pytest.raises(StoreUnavailableError, match="disk full"):
            service.force_save()
        assert saved_files(path) == saved, "no half line is left in the journal"
        assert temp_files(path.parent) == []
    service.force_save()
    assert_file_holds(path, expected)


def test_rename_refused(service: SessionService, path: Path) -> None:
    expected = populate(service)
    saved = saved_files(path)

    def refuse(source: str, target: str) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.MonkeyPatch.context() as patch:
        compact_every_write(patch)
        patch.setattr(os, "replace", refuse)
        with pytest.raises(StoreUnavailableError, match="permission denied"):
            service.force_save()
    assert saved_files(path) == saved and temp_files(path.parent) == []
    service.force_save()
    assert_file_holds(path, expected)


def test_lock_file_refused(service: SessionService, path: Path) -> None:
    expected = populate(service)

    def no_lock(fd: int, *, wait: bool = False) -> bool:
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fsio, "try_lock", no_lock)
        with pytest.raises(StoreUnavailableError, match=r"cannot lock .*read-only"):
            service.force_save()
    service.force_save()
    assert_file_holds(path, expected)


def test_shutdown_on_a_full_disk_reports_the_unsaved(service: SessionService, path: Path) -> None:
    expected = populate(service)
    saved = saved_files(path)
    with pytest.MonkeyPatch.context() as patch:
        Fault(patch, "write_all", errno.ENOSPC)
        report = service.shutdown(timeout=0.1)
    assert not report.complete and len(report.unsaved) == 3
    assert report.error is not None and "disk full" in report.error
    assert saved_files(path) == saved
    del expected  # the unsaved changes are reported, not silently dropped
