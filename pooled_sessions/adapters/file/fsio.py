"""File-system steps of the JSON file stores: atomic replace, the lock file, stray temp files.

Kept in one place so both file stores share them (and tests can inject faults here).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
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
    """The token the last writer of ``path`` left in the lock file ("" if none)."""
    try:
        with open(path + ".lock", "rb") as file:
            return file.read(TOKEN_BYTES).hex()
    except OSError:
        return ""


def write_token(path: str) -> str:
    """Put a fresh token in the lock file (the caller holds the lock); returns it."""
    token = os.urandom(TOKEN_BYTES)
    fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
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


def open_lock(path: str) -> int:
    """Open (creating it 0600) the lock file beside ``path``; opened per use, so fork-safe."""
    return os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False while another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool = True) -> Iterator[None]:
    """Hold the lock file beside ``path``, waiting for it."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


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
        except OSError as exc:
            stack.close()
            raise lock_failed(self._path, exc) from exc
        self._held = stack

    def __exit__(self, *exc_info: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()
