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
import weakref
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


# -- the snapshot and its journal: files held open, appends ---------------------------------


class Pin:
    """A file held open for reading.

    While it is held its inode number cannot be handed to another file, so a path that
    still shows this inode is still this file: one stat tells whether it was replaced.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        found = os.fstat(fd)
        self.inode = (found.st_dev, found.st_ino)
        self.size = found.st_size
        self.mtime_ns = found.st_mtime_ns
        self._close = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        """Let the file go (idempotent)."""
        self._close()

    def is_file(self, found: os.stat_result | None) -> bool:
        """True when ``found``, a stat of a path, is this file."""
        return found is not None and (found.st_dev, found.st_ino) == self.inode

    def unchanged(self, found: os.stat_result | None) -> bool:
        """`is_file`, with the size and mtime it had when it was opened."""
        return (
            found is not None
            and self.is_file(found)
            and (found.st_size, found.st_mtime_ns) == (self.size, self.mtime_ns)
        )


def stat_or_none(path: str) -> os.stat_result | None:
    """The stat of ``path``, or None if there is no file."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def pin(path: str) -> Pin | None:
    """Open ``path`` and hold it, or None if there is no file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreUnavailableError(f"{path} is a directory, not a sessions file")
    return Pin(fd)


def pin_pair(path: str, journal: str, tries: int = 20) -> tuple[Pin | None, Pin | None]:
    """The snapshot and its journal, opened as one pair.

    A compaction renames the new snapshot into place before the new journal, so a snapshot
    still in place after the journal was opened is at least as new as the journal.
    """
    for _ in range(tries):
        snapshot = pin(path)
        try:
            journal_pin = pin(journal)
        except BaseException:
            if snapshot is not None:
                snapshot.close()
            raise
        now = stat_or_none(path)
        if (snapshot is None and now is None) or (snapshot is not None and snapshot.is_file(now)):
            return snapshot, journal_pin
        for held in (snapshot, journal_pin):
            if held is not None:
                held.close()
    raise StoreUnavailableError(f"{path} was replaced {tries} times while being opened")


class Sight(NamedTuple):
    """A stat of the snapshot and of its journal (None for a file that is not there)."""

    snapshot: os.stat_result | None
    journal: os.stat_result | None


def look(path: str, journal: str) -> Sight:
    """Stat both files: all a reader does when nothing changed."""
    return Sight(stat_or_none(path), stat_or_none(journal))


class Pair(NamedTuple):
    """The snapshot and its journal, held open, and their bytes."""

    snapshot: Pin | None
    snapshot_data: bytes
    journal: Pin | None
    journal_data: bytes

    def close(self) -> None:
        """Let both files go."""
        for held in (self.snapshot, self.journal):
            if held is not None:
                held.close()


def read_pair(path: str, journal: str) -> Pair:
    """Open the pair (`pin_pair`) and read both files whole."""
    snapshot, journal_pin = pin_pair(path, journal)
    pair = Pair(snapshot, b"", journal_pin, b"")
    try:
        return pair._replace(
            snapshot_data=b"" if snapshot is None else read_pinned(snapshot),
            journal_data=b"" if journal_pin is None else read_pinned(journal_pin),
        )
    except BaseException:
        pair.close()
        raise


def read_pinned(held: Pin, offset: int = 0) -> bytes:
    """Every byte of a held file from ``offset`` to its end."""
    chunks = []
    while chunk := os.pread(held.fd, max(held.size - offset, 0) + (1 << 16), offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def fdatasync(fd: int) -> None:
    """Flush a descriptor's data (and the size it needs) to disk."""
    os.fdatasync(fd)


def append(path: str, inode: tuple[int, int], at: int, data: bytes) -> int:
    """Append ``data`` to the journal at ``path`` with one write and one fdatasync; returns
    the new end. The caller holds the lock file.

    A torn tail past ``at`` (left by a crashed writer) is cut off first; a write that fails
    halfway is cut off again, so no half line stays behind.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        found = os.fstat(fd)
        if (found.st_dev, found.st_ino) != inode or found.st_size < at:
            raise StoreUnavailableError(f"{path} was changed by something that holds no lock")
        if found.st_size > at:
            os.ftruncate(fd, at)
        try:
            write_all(fd, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, at)
            raise
        fdatasync(fd)
    finally:
        os.close(fd)
    return at + len(data)


def replace_pinned(path: str, pieces: Sequence[bytes]) -> Pin:
    """`replace_atomically`, then hold the new file (the caller holds the lock: it is ours)."""
    replace_atomically(path, pieces)
    held = pin(path)
    if held is None:
        raise FileNotFoundError(errno.ENOENT, "removed right after it was written", path)
    return held


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
