"""The start-up check of a sessions file: its directory exists and takes new files, and
the lock file beside it opens; otherwise every write would fail later."""

from __future__ import annotations

import os

from pooled_sessions.adapters.file import fsio
from pooled_sessions.errors import StoreUnavailableError


def check_writable(path: str) -> None:
    """Raise `StoreUnavailableError` naming the problem unless ``path`` can be written."""
    directory = os.path.dirname(path) or "."
    fsio.check_directory(path)
    if os.path.isdir(path):
        raise StoreUnavailableError(f"{path} is a directory, not a sessions file")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreUnavailableError(
            f"directory {directory} of sessions file {path} is not writable by this process"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise StoreUnavailableError(f"sessions file {path} is not readable by this process")
    try:
        os.close(fsio.open_lock(fsio.lock_path(path)))
    except OSError as exc:
        raise fsio.lock_failed(path, exc) from exc
