"""Helpers for the JSON file store tests: sample documents, temp-file listing, a service."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple

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


class Stored(NamedTuple):
    """What a sessions file and its journal hold, read without the library's reader."""

    sessions: dict[str, Any]
    tombstones: dict[str, float]
    generation: int
    lines: int  # whole change lines applied from the journal
    torn: int  # bytes after the last whole line


def journal_of(path: Path | str) -> Path:
    return Path(f"{path}.journal")


def stored(path: Path | str) -> Stored:
    """Read the snapshot with json, then replay its journal line by line, checking each
    line's CRC32; a journal of another generation is superseded and not applied."""
    body = json.loads(Path(path).read_bytes())
    sessions, tombstones = body["sessions"], body["tombstones"]
    generation = body.get("generation", 0)
    journal = journal_of(path)
    data = journal.read_bytes() if journal.exists() else b""
    lines, end = 0, 0
    for number, line in enumerate(data.split(b"\n")[:-1]):
        crc, _, text = line.partition(b" ")
        if int(crc, 16) != zlib.crc32(text):
            break
        end += len(line) + 1
        value = json.loads(text)
        if number == 0:
            assert value["format"] == "pooled_sessions.journal"
            if value["generation"] != generation:
                break
            continue
        for sid in value.get("drop", []):
            sessions.pop(sid, None)
        for sid in value.get("forget", []):
            tombstones.pop(sid, None)
        for sid, ended_at in value.get("end", {}).items():
            sessions.pop(sid, None)
            tombstones[sid] = max(ended_at, tombstones.get(sid, ended_at))
        sessions.update(value.get("set", {}))
        lines += 1
    return Stored(sessions, tombstones, generation, lines, len(data) - end)
