"""File-system steps of the JSON file stores: atomic replace, the lock file, stray temp files.

Kept in one place so both file stores share them (and tests can inject faults here).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from pooled_sessions.errors import StoreUnavailableError

FILE_MODE = 0o600
TOKEN_BYTES = 16


class Stamp(NamedTuple):
    """Identity of one version of a file.

    A replace gives the file a new inode, but a file system may hand a freed inode out
    again, with the same size and (coarse) mtime. ``token``, a random value each writer
    puts in the lock file before its rename, tells such versions apart.
    """

    inode: int
    mtime_ns: int
    size: int
    token: str = ""


def stamp_of(result: os.stat_result) -> Stamp:
    """The stamp of a stat result (without the token)."""
    return Stamp(result.st_ino, result.st_mtime_ns, result.st_size)


def read_token(path: str) -> str:
    """The token the last writer of ``path`` left in the lock file ("" if none, or if the
    lock file is not one this store would use)."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.pread(fd, TOKEN_BYTES, 0).hex()
    except OSError:
        return ""
    finally:
        os.close(fd)


def write_token(path: str) -> str:
    """Put a fresh token in the lock file (the caller holds the lock); returns it."""
    token = os.urandom(TOKEN_BYTES)
    fd = open_lock(lock_path(path))
    try:
        os.pwrite(fd, token, 0)
    finally:
        os.close(fd)
    return token.hex()


def current_stamp(path: str) -> Stamp | None:
    """The stamp of the file now, or None if there is no file."""
    token = read_token(path)  # before the stat: a writer changes the token before its rename
    try:
        return stamp_of(os.stat(path))._replace(token=token)
    except FileNotFoundError:
        return None


def read_file(path: str, known: Stamp | None = None) -> tuple[bytes | None, Stamp] | None:
    """The file's bytes and the stamp of exactly that version, or None if absent.

    When that version is the ``known`` one its bytes are not read (None in their place):
    a writer checks its copy against the file without reading a large file again.
    """
    token = read_token(path)
    try:
        with open(path, "rb") as file:
            stamp = stamp_of(os.fstat(file.fileno()))._replace(token=token)
            return (None if stamp == known else file.read()), stamp
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StoreUnavailableError(f"{path} is a directory, not a sessions file") from None


def temp_pattern(path: str) -> str:
    """Glob pattern of the temp files a writer of ``path`` creates."""
    directory, name = os.path.split(path)
    return os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")


def remove_strays(path: str) -> int:
    """Delete temp files left by a crashed writer; call with the lock file held."""
    removed = 0
    for stray in glob.glob(temp_pattern(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stray)
            removed += 1
    return removed


def check_directory(path: str) -> None:
    """Fail early, with the path named, when the file's directory is missing."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise StoreUnavailableError(f"directory {directory} for sessions file does not exist")


def open_temp(path: str) -> tuple[int, str]:
    """Create the temp file beside ``path`` (same file system, so the replace is atomic)."""
    directory, name = os.path.split(path)
    return tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")


def fsync(fd: int) -> None:
    """Flush a descriptor to disk."""
    os.fsync(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, or raise."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_atomically(path: str, data: bytes | Sequence[bytes]) -> Stamp:
    """Write ``data`` (bytes, or pieces written in order) to ``path`` so readers see the old
    file or the new one, never a mix.

    Temp file in the same directory, fsync, rename over, fsync of the directory. On any
    failure the temp file is removed and the old file stays; a retry starts a fresh temp
    file, since a descriptor whose fsync failed cannot be trusted again.
    """
    pieces = (data,) if isinstance(data, bytes) else data
    fd, temp = open_temp(path)
    try:
        try:
            for piece in pieces:
                write_all(fd, piece)
            fsync(fd)
            written = stamp_of(os.fstat(fd))
        finally:
            os.close(fd)
        written = written._replace(token=write_token(path))
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    sync_directory(os.path.dirname(path) or ".")
    return written


def sync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
"""Never follow a planted symlink; never wait on a planted FIFO; not inherited by children."""


def lock_path(path: str) -> str:
    """The lock file beside ``path``."""
    return path + ".lock"


def open_lock(name: str) -> int:
    """Open (creating it 0600) the lock file ``name``, refusing one that is not this
    process's own regular file; opened per use, so fork-safe."""
    try:
        fd = os.open(name, LOCK_FLAGS, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise unsafe_lock(name, "it is a symbolic link, which is never followed") from None
        if exc.errno == errno.EISDIR:
            raise unsafe_lock(name, "it is a directory, not a regular file") from None
        raise
    try:
        check_lock_file(name, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_lock_file(name: str, found: os.stat_result) -> None:
    """Refuse a lock file that another user could swap or that is not a plain file."""
    if not stat.S_ISREG(found.st_mode):
        raise unsafe_lock(name, f"it is {kind_of(found.st_mode)}, not a regular file")
    if found.st_uid != os.geteuid():
        raise unsafe_lock(
            name, f"it is owned by uid {found.st_uid}, not by this process's uid {os.geteuid()}"
        )


def kind_of(mode: int) -> str:
    """What a non-regular file is, for a message."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def unsafe_lock(name: str, problem: str) -> StoreUnavailableError:
    """The error for a lock file this store will not use."""
    return StoreUnavailableError(
        f"refusing lock file {name}: {problem}; remove it (the store creates its own)"
    )


def still_there(fd: int, name: str) -> bool:
    """True while the file locked through ``fd`` is the one at ``name`` (not deleted or
    replaced since it was opened)."""
    held = os.fstat(fd)
    try:
        now = os.stat(name, follow_symlinks=stat.S_ISDIR(held.st_mode))
    except FileNotFoundError:
        return False
    return (held.st_ino, held.st_dev) == (now.st_ino, now.st_dev)


def try_lock(fd: int, *, wait: bool = False) -> bool:
    """Take the exclusive lock (``wait``: waiting for it); False while another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class HeldLock(NamedTuple):
    """The locks a writer holds: the lock file, and the directory when it can be locked."""

    lock_fd: int
    dir_fd: int | None

    def close(self) -> None:
        """Let both go (closing a descriptor unlocks it)."""
        if self.dir_fd is not None:
            os.close(self.dir_fd)
        os.close(self.lock_fd)


NO_DIRECTORY_LOCK = {errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP}
"""What flock on a directory says on a file system that cannot lock one (NFS): the lock
file alone is used there."""


def acquire(path: str, *, wait: bool = True) -> HeldLock | None:
    """Lock the lock file beside ``path``, then its directory; release with ``close()``.

    ``wait=False``: None at once while another holder has either. A lock taken on a file
    deleted or replaced meanwhile locks nothing anyone else will see, so it is dropped and
    the file now at the path is locked instead. The directory lock keeps writers apart even
    when the lock file is deleted while held (a cleanup job, a hand): a second writer would
    create and lock a new file, but the directory is the same one for both.
    """
    lock_fd = _lock_verified(lock_path(path), open_lock, wait)
    if lock_fd is None:
        return None
    try:
        dir_fd = _lock_verified(os.path.dirname(path) or ".", _open_directory, wait)
    except OSError as exc:
        if exc.errno not in NO_DIRECTORY_LOCK:
            os.close(lock_fd)
            raise
        return HeldLock(lock_fd, None)
    except BaseException:
        os.close(lock_fd)
        raise
    if dir_fd is None:
        os.close(lock_fd)
        return None
    return HeldLock(lock_fd, dir_fd)


def _open_directory(directory: str) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _lock_verified(name: str, opener: Callable[[str], int], wait: bool) -> int | None:
    """Open ``name`` with ``opener`` and lock it, until the locked file is still the one at
    ``name``; None (without waiting) when another holder has it."""
    while True:
        fd = opener(name)
        try:
            if not try_lock(fd, wait=wait):
                os.close(fd)
                return None
            if still_there(fd, name):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the lock file beside ``path`` (and its directory), waiting for them."""
    held = acquire(path)
    assert held is not None  # a waiting acquire returns only with the lock
    try:
        yield
    finally:
        held.close()


def describe(error: OSError) -> str:
    """A short reason for an OS error (``disk full``, ``permission denied``, ...)."""
    names = {
        errno.ENOSPC: "disk full",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.EIO: "I/O error",
    }
    return names.get(error.errno or 0, error.strerror or type(error).__name__)


def lock_failed(path: str, error: OSError) -> StoreUnavailableError:
    """The error for a lock file that cannot be opened or locked."""
    return StoreUnavailableError(f"cannot lock {path}.lock: {describe(error)}")


class Guard:
    """This process's mutex and the cross-process lock file, taken together."""

    def __init__(self, mutex: threading.Lock, path: str) -> None:
        self._mutex = mutex
        self._path = path
        self._held: contextlib.ExitStack | None = None

    def __enter__(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(self._mutex)
        try:
            stack.enter_context(locked(self._path))
        except BaseException as exc:
            stack.close()
            if isinstance(exc, OSError):
                raise lock_failed(self._path, exc) from exc
            raise
        self._held = stack

    def __exit__(self, *exc_info: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()
