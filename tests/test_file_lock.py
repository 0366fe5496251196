"""The lock file beside a sessions file: deleted while in use, planted as a symlink, a FIFO,
a directory or another user's file. Real files, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pooled_sessions import SessionService, Settings, StoreUnavailableError
from pooled_sessions.adapters.file import fsio
from pooled_sessions.adapters.file.store_async import AioFileStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.tools.migrate import upsert_of
from tests.filekit import mode_of, stored
from tests.storekit import make_record, session_id

ROOT = Path(__file__).resolve().parents[1]
WRITERS = ("file", "file", "aiofile", "aiofile")
PER_WRITER = 300


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


def lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.procworkers", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_writers_lose_nothing_while_the_lock_file_is_deleted_every_few_ms(path: Path) -> None:
    unlinker = child("unlinker", str(lock_of(path)))
    writers = [
        child("confirmed", f"{kind}://{path}", f"w{n}", str(PER_WRITER))
        for n, kind in enumerate(WRITERS)
    ]
    confirmed: list[str] = []
    try:
        for writer in writers:
            output, errors = writer.communicate(timeout=300)
            assert writer.returncode == 0, errors
            confirmed += output.split()
    finally:
        removed, _ = unlinker.communicate("", timeout=30)
        for process in (unlinker, *writers):
            if process.poll() is None:
                process.kill()
    assert int(removed) > 50, f"the lock file was deleted only {removed.strip()} times"
    assert len(confirmed) == len(WRITERS) * PER_WRITER
    sessions = stored(path).sessions  # the snapshot with its journal replayed
    assert len(sessions) == len(confirmed) and set(sessions) == set(confirmed)


def test_a_holder_whose_lock_file_was_deleted_still_keeps_others_out(path: Path) -> None:
    entered: list[float] = []

    def second_holder() -> None:
        with fsio.locked(str(path)):
            entered.append(time.monotonic())

    with fsio.locked(str(path)):
        os.unlink(lock_of(path))
        other = threading.Thread(target=second_holder)
        other.start()
        time.sleep(0.3)
        assert entered == [], "a second holder got in through a new lock file"
        released = time.monotonic()
    other.join(5)
    assert entered and entered[0] >= released


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    yield target
    assert target.read_text() == "do not touch\n", "the symlink's target was written"


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(
    path: Path, victim: Path
) -> None:
    lock_of(path).symlink_to(victim)
    with pytest.raises(StoreUnavailableError, match=r"sessions\.json\.lock.*symbolic link"):
        SessionService(path)
    assert not path.exists()


def test_a_dangling_symlink_is_refused_and_nothing_is_created(path: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    lock_of(path).symlink_to(target)
    with pytest.raises(StoreUnavailableError, match="symbolic link"):
        SessionService(path)
    assert not target.exists()


async def test_the_aiofile_store_refuses_a_symlink_too(path: Path, victim: Path) -> None:
    lock_of(path).symlink_to(victim)
    store = AioFileStore(StoreURL.parse(f"aiofile://{path}"), Settings())
    with pytest.raises(StoreUnavailableError, match="symbolic link"):
        now = time.time()
        await store.write([upsert_of(session_id(n), make_record(n, now)) for n in range(3)], now)
    assert not path.exists()


@pytest.mark.parametrize(
    ("plant", "words"),
    [
        (os.mkfifo, "a FIFO, not a regular file"),
        (os.mkdir, "a directory, not a regular file"),
    ],
    ids=["fifo", "directory"],
)
def test_a_lock_file_that_is_not_a_regular_file_is_refused(
    path: Path, plant: object, words: str
) -> None:
    assert callable(plant)
    plant(lock_of(path))
    with pytest.raises(StoreUnavailableError, match=rf"{lock_of(path)}: .*{words}"):
        SessionService(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_lock_file_owned_by_another_user_is_refused(path: Path) -> None:
    lock_of(path).write_bytes(b"")
    os.chown(lock_of(path), 4242, 4242)
    with pytest.raises(StoreUnavailableError, match="owned by uid 4242, not by this process"):
        SessionService(path)
    os.chown(lock_of(path), os.geteuid(), os.getegid())
    with SessionService(path) as svc:
        svc.create_session("alice")


def test_the_lock_file_is_created_0600(path: Path) -> None:
    old = os.umask(0)
    try:
        with SessionService(path) as svc:
            svc.create_session("alice")
    finally:
        os.umask(old)
    assert mode_of(lock_of(path)) == 0o600


def test_a_refused_lock_file_loses_nothing_once_it_is_fixed(path: Path, victim: Path) -> None:
    svc = SessionService(
        path, write_behind=True, save_delay_seconds=3600, retry_initial_seconds=3600
    )
    try:
        sid = svc.create_session("alice", {"n": 1})  # pending until the flush
        os.unlink(lock_of(path))
        lock_of(path).symlink_to(victim)
        with pytest.raises(StoreUnavailableError, match="symbolic link"):
            svc.force_save()
        os.unlink(lock_of(path))
        svc.force_save()
    finally:
        svc.shutdown(timeout=1)
    with SessionService(path) as check:
        session = check.get_session(sid)
        assert session is not None and session.attributes == {"n": 1}


def test_a_change_refused_by_the_lock_file_raises_and_changes_nothing(
    path: Path, victim: Path
) -> None:
    with SessionService(path) as svc:
        kept = svc.create_session("alice", {"n": 1})
        os.unlink(lock_of(path))
        lock_of(path).symlink_to(victim)
        with pytest.raises(StoreUnavailableError, match="symbolic link"):
            svc.create_session("bob")
        assert svc.sessions_of("bob") == [], "the refused session does not exist"
        os.unlink(lock_of(path))
        later = svc.create_session("bob")
    with SessionService(path) as check:
        assert check.get_session(kept) is not None and check.get_session(later) is not None
        assert len(check.sessions_of("bob")) == 1


# -- held open between commits ----------------------------------------------------------------


def open_descriptors_of(name: Path) -> int:
    """Descriptors of this process open on ``name``."""
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}") == str(name))


def test_commits_open_the_lock_file_once_and_again_only_when_it_was_replaced(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open_lock = fsio.open_lock

    def counting(name: str) -> int:
        opened.append(name)
        return real_open_lock(name)

    monkeypatch.setattr(fsio, "open_lock", counting)
    with SessionService(path) as svc:
        sid = svc.create_session("alice")
        before = len(opened)
        for n in range(20):
            assert svc.update_session(sid, {"n": n})
        assert len(opened) == before, "the lock file stays open between commits"
        os.unlink(lock_of(path))
        assert svc.update_session(sid, {"n": 20})
        assert len(opened) == before + 1 and lock_of(path).exists()
        assert open_descriptors_of(lock_of(path)) == 1
    assert open_descriptors_of(lock_of(path)) == 0, "shutdown closes the lock file"
    assert open_descriptors_of(path.parent) == 0, "and the directory"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_does_not_share_the_lock_its_parent_holds(path: Path) -> None:
    lock = fsio.LockFile(str(path))
    assert lock.take()
    pid = os.fork()
    if pid == 0:  # the child: a flock on the parent's open file would be granted at once
        code = 1
        try:
            code = 0 if not lock.take(wait=False) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    lock.release()
    lock.close()
    assert os.waitstatus_to_exitcode(status) == 0, "the child got in beside its parent"


def test_a_released_lock_lets_another_holder_in_while_it_stays_open(path: Path) -> None:
    first, second = fsio.LockFile(str(path)), fsio.LockFile(str(path))
    try:
        assert first.take()
        assert not second.take(wait=False)
        first.release()
        assert second.take(wait=False)
        assert not first.take(wait=False)
        second.release()
        assert first.take(wait=False)
    finally:
        first.close()
        second.close()
