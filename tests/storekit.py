"""Store URLs of every kind, and sessions to seed them with, for the migration and CLI tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pooled_sessions.codec import Delete, Operation, Record
from pooled_sessions.config import Settings
from pooled_sessions.tools.migrate import upsert_of
from pooled_sessions.tools.stores import open_target

SETTINGS = Settings()


def make_record(n: int, now: float, **changes: Any) -> Record:
    """A session record with everything a session can carry, varied by ``n``."""
    record: Record = {
        "username": f"user-{n % 3}" if n % 5 else "zoë ☃",
        "attributes": {
            "cart": [n, n + 1, {"sku": f"A-{n}", "qty": 2}],
            "role": "admin" if n % 4 == 0 else "member",
            "note": 'ünïcode ✓ "quoted" \\ back' if n % 2 else None,
            "ratio": n / 7,
            "big": 2**60 + n,
        },
        "ip": None if n % 6 == 0 else f"2001:db8::{n:x}" if n % 2 else f"203.0.113.{n % 250}",
        "user_agent": None if n % 3 == 0 else f"Agent/{n}.0 (X11; Linux)",
        "created_at": now - 600.0 - n + 0.123456,
        "last_accessed_at": now - n / 10 + 0.654321,
        "expires_at": now + 1800.0 + n + 0.5,
        "absolute_expires_at": None if n % 2 else now + 86_400.0 + n,
    }
    record.update(changes)  # type: ignore[typeddict-item]
    return record


def session_id(n: int) -> str:
    return f"sess-{n:04d}-" + uuid.uuid5(uuid.NAMESPACE_URL, str(n)).hex


def sample(count: int, now: float | None = None) -> dict[str, Record]:
    """``count`` live sessions."""
    when = time.time() if now is None else now
    return {session_id(n): make_record(n, when) for n in range(count)}


def write(url: str, operations: list[Operation], now: float | None = None) -> None:
    """Apply operations to the store at ``url`` through its own write path."""
    store = open_target(url, SETTINGS)
    try:
        store.write(operations, time.time() if now is None else now)
    finally:
        store.close()


def seed(url: str, records: Mapping[str, Record]) -> None:
    """Write ``records`` into the store at ``url``."""
    write(url, [upsert_of(sid, record) for sid, record in records.items()])


def end(url: str, session_id: str, username: str) -> None:
    """End one session in the store at ``url`` (it leaves a tombstone)."""
    write(url, [Delete(session_id, username, time.time())])


def load_all(url: str, ids: list[str]) -> dict[str, Record | None]:
    """What the store at ``url`` holds for each id."""
    store = open_target(url, SETTINGS)
    try:
        return {sid: store.load(sid) for sid in ids}
    finally:
        store.close()


def count(url: str) -> int:
    store = open_target(url, SETTINGS)
    try:
        return store.count()
    finally:
        store.close()


def assert_same(expected: Record, found: Record | None, where: str) -> None:
    """Compare two records field by field (times to the millisecond Redis keeps)."""
    assert found is not None, f"{where}: missing"
    for name in ("username", "attributes", "ip", "user_agent"):
        assert found[name] == expected[name], f"{where}: {name}"
    assert type(found["attributes"]["big"]) is int, f"{where}: big int became a float"
    for name in ("created_at", "last_accessed_at", "expires_at", "absolute_expires_at"):
        want, got = expected[name], found[name]  # type: ignore[literal-required]
        if want is None:
            assert got is None, f"{where}: {name}"
        else:
            assert got is not None and abs(got - want) <= 0.001, f"{where}: {name} {got} {want}"


def memory_url() -> str:
    return f"memory://m{uuid.uuid4().hex}"


def file_url(directory: Path, name: str) -> str:
    return str(directory / f"{name}.json")


def aiofile_url(directory: Path, name: str) -> str:
    return f"aiofile://{directory / f'{name}.json'}"


def prefixed(url: str, name: str) -> str:
    """A Redis URL with a key prefix of its own, so two stores can share a server."""
    return f"{url}{'&' if '?' in url else '?'}prefix={name}{uuid.uuid4().hex[:8]}"
