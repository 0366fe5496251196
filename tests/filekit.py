"""Helpers for the JSON file store tests: sample documents, temp-file listing, a service."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

EPOCH = 1_700_000_000.0


def record(username: str = "alice", **attributes: Any) -> dict[str, Any]:
    """A well-formed stored session that expires far in the future."""
    return {
        "username": username,
        "attributes": attributes,
        "ip": "203.0.113.7",
        "user_agent": "Firefox/128",
        "created_at": EPOCH,
        "last_accessed_at": EPOCH,
        "expires_at": 4_000_000_000.0,
        "absolute_expires_at": None,
    }


def document(
    sessions: dict[str, Any] | None = None, tombstones: dict[str, float] | None = None, **top: Any
) -> dict[str, Any]:
    """A file document in the current format."""
    body: dict[str, Any] = {
        "format": "pooled_sessions",
        "version": 1,
        "sessions": {"s-one": record(cart=[1, 2]), "s-two": record("bob")}
        if sessions is None
        else sessions,
        "tombstones": {"s-gone": EPOCH} if tombstones is None else tombstones,
    }
    body.update(top)
    return body


def write_document(path: Path, body: dict[str, Any]) -> bytes:
    data = (json.dumps(body) + "\n").encode()
    path.write_bytes(data)
    return data


def temp_files(directory: Path) -> list[str]:
    """Temp files a writer left in ``directory``."""
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def mode_of(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
