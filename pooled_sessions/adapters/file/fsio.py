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
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from pooled_sessions.errors import StoreUnavailableError

FILE_MODE = 0o600


class Stamp(NamedTuple):
    """Identity of one version of a file: a replace gives it a new inode. The stores hold
    the version they read open, so its inode cannot be handed to a newer file."""

    inode: int
    mtime_ns: int
    size: int


def stamp_of(result: os.stat_result) -> Stamp:
    """The stamp of a stat result."""
    return Stamp(result.st_ino, result.st_mtime_ns, result.st_size)


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

    def stat(self) -> os.stat_result:
        """An ``fstat`` of the file held: what it is now, wherever its path points."""
        return os.fstat(self.fd)

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
    """Every byte of a held file from ``offset`` to its end (a read that comes back short
    of what it asked for has reached it)."""
    chunks = []
    while True:
        wanted = max(held.size - offset, 0) + (1 << 16)
        chunk = os.pread(held.fd, wanted, offset)
        chunks.append(chunk)
        offset += len(chunk)
        if len(chunk) < wanted:
            return b"".join(chunks)


def fdatasync(fd: int) -> None:
    """Flush a descriptor's data (and the size it needs) to disk."""
    os.fdatasync(fd)


class Appended(NamedTuple):
    """A journal line written by `append`: the journal's new end, and the descriptor `sync`
    makes it durable through (`SYNCED` once a store already did)."""

    end: int
    fd: int


SYNCED = -1
"""`Appended.fd` of a line already made durable, its descriptor closed."""


def append(path: str, inode: tuple[int, int], at: int, data: bytes) -> Appended:
    """Append ``data`` to the journal at ``path`` with one write. The caller holds the lock
    file, and calls `sync` on the descriptor returned once it has let go of it: other
    processes append meanwhile and their fdatasyncs overlap, where holding the lock through
    the fdatasync made every process's commit wait for the others' disk flushes.

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
    except BaseException:
        os.close(fd)
        raise
    return Appended(at + len(data), fd)


def sync(fds: Sequence[int]) -> None:
    """fdatasync, then close, each descriptor `append` left open; raises the first failure
    once all are closed. A line that a later writer's fdatasync of the same file already
    flushed costs nothing more; a journal replaced meanwhile by a snapshot (compaction) is
    still flushed through its old descriptor, so the line is durable in one or the other."""
    failure: OSError | None = None
    for fd in fds:
        try:
            fdatasync(fd)
        except OSError as exc:
            failure = failure or exc
        finally:
            os.close(fd)
    if failure is not None:
        raise failure


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


LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
"""Never follow a planted symlink; never wait on a planted FIFO; not inherited by children."""


def lock_path(path: str) -> str:
    """The lock file beside ``path``."""
    return path + ".lock"


def open_lock(name: str) -> int:
    """Open (creating it 0600) the lock file ``name``, refusing one that is not this
    process's own regular file (`LockFile` holds it open, and opens it again after fork())."""
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


def try_lock(fd: int, *, wait: bool = False) -> bool:
    """Take the exclusive lock (``wait``: waiting for it); False while another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


NO_DIRECTORY_LOCK = {errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP}
"""What flock on a directory says on a file system that cannot lock one (NFS): the lock
file alone is used there."""


def _open_directory(directory: str) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class _Held:
    """One file a `LockFile` locks, held open: its name, opener and open descriptor."""

    def __init__(self, name: str, opener: Callable[[str], int], directory: bool) -> None:
        self.name, self.opener, self.directory = name, opener, directory
        self.fd: int | None = None
        self.inode = (0, 0)

    def lock(self, wait: bool) -> bool:
        """Lock the file now at ``name``; False (without waiting) while another holder has it.

        A lock taken on a file deleted or replaced since it was opened locks nothing anyone
        else will see: that file is closed, and the one now at the name opened and locked.
        """
        while True:
            if self.fd is None:
                fd = self.opener(self.name)
                found = os.fstat(fd)
                self.fd, self.inode = fd, (found.st_ino, found.st_dev)
            try:
                if not try_lock(self.fd, wait=wait):
                    return False
                if self._still_there():
                    return True
            except BaseException:
                self.close()
                raise
            self.close()

    def _still_there(self) -> bool:
        try:
            now = os.stat(self.name, follow_symlinks=self.directory)
        except FileNotFoundError:
            return False
        return (now.st_ino, now.st_dev) == self.inode

    def unlock(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            except OSError:
                self.close()  # closing the descriptor unlocks it too

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class LockFile:
    """The cross-process lock of a sessions file: the lock file beside it, then its directory.

    Both stay open between commits, so a commit costs a flock and a stat of each rather
    than opening and checking both files again. The directory lock keeps writers apart
    even when the lock file is deleted while held (a cleanup job, a hand): a second writer
    would create and lock a new file, but the directory is the same one for both. A child
    process after ``fork()`` opens its own files: a flock belongs to the open file, which
    parent and child would share. Not for two threads at once (the stores hold a mutex).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._files = (
            _Held(lock_path(path), open_lock, directory=False),
            _Held(os.path.dirname(path) or ".", _open_directory, directory=True),
        )
        self._locks_directory = True
        self._pid = os.getpid()
        weakref.finalize(self, _close_all, self._files)

    def take(self, *, wait: bool = True) -> bool:
        """Lock both; ``wait=False``: False at once while another holder has either."""
        if self._pid != os.getpid():  # the parent's descriptors, and its locks, stay its own
            self.close()
            self._pid = os.getpid()
        lock_file, directory = self._files
        if not lock_file.lock(wait):
            return False
        if not self._locks_directory:
            return True
        try:
            if directory.lock(wait):
                return True
        except OSError as exc:
            if exc.errno in NO_DIRECTORY_LOCK:
                self._locks_directory = False  # a file system that cannot lock one (NFS)
                return True
            lock_file.unlock()
            raise
        except BaseException:
            lock_file.unlock()
            raise
        lock_file.unlock()
        return False

    def release(self) -> None:
        """Unlock both (they stay open for the next `take`)."""
        lock_file, directory = self._files
        directory.unlock()
        lock_file.unlock()

    def close(self) -> None:
        """Close both files (closing unlocks them); a later `take` opens them again."""
        _close_all(self._files)


def _close_all(files: Sequence[_Held]) -> None:
    for held in files:
        held.close()


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold the lock of the sessions file ``path`` (`LockFile`), waiting for it."""
    lock = LockFile(path)
    lock.take()
    try:
        yield
    finally:
        lock.close()


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
    """This process's mutex and the cross-process `LockFile`, taken together (``with``)."""

    def __init__(self, mutex: threading.Lock, path: str) -> None:
        self._mutex = mutex
        self.lock = LockFile(path)

    def __enter__(self) -> None:
        self._mutex.acquire()
        try:
            self.lock.take()
        except BaseException as exc:
            self._mutex.release()
            if isinstance(exc, OSError):
                raise lock_failed(self.lock.path, exc) from exc
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.lock.release()
        finally:
            self._mutex.release()
