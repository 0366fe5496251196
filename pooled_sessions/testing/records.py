"""Sessions for the store contract: records that carry everything a record can, and writes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pooled_sessions.codec import Delete, Record, Upsert, encode_attributes, upsert_of

ATTRIBUTES: dict[str, Any] = {
    "cart": [3, 7, {"sku": "A-1", "qty": 2, "gift": False}],
    "note": 'ünïcode ✓ "quoted" \\ back\nline',
    "big": 2**60 + 1,
    "ratio": 1 / 3,
    "tiny": 1e-7,
    "zero": 0,
    "negative": -42,
    "flag": True,
    "nothing": None,
    "empty_list": [],
    "empty_map": {},
    "dotted.name": "a.b",
    "with space": "x y",
    "@user": "not metadata",
    "ключ": "значение",
    "": "empty name",
}
"""Attribute values of every JSON type, and names a store might mistake for its own."""


def new_id(label: str = "s") -> str:
    """A fresh session id (URL-safe), labelled for failure messages."""
    return f"{label}-{uuid.uuid4().hex}"


def make_record(now: float, username: str = "alice", **changes: Any) -> Record:
    """A live session record (expiring in ten minutes) with every field filled."""
    record: Record = {
        "username": username,
        "attributes": dict(ATTRIBUTES),
        "ip": "2001:db8::7",
        "user_agent": "Agent/1.0 (X11; Linux) ☃",
        "created_at": now - 60.123456789,
        "last_accessed_at": now - 0.987654321,
        "expires_at": now + 600.000123,
        "absolute_expires_at": now + 86_400.5,
    }
    record.update(changes)  # type: ignore[typeddict-item]
    return record


def variants(now: float) -> list[Record]:
    """Records that differ where stores tend to slip: absent fields, odd names, no data."""
    return [
        make_record(now),
        make_record(now, "zoë ☃ o'brien", ip=None, user_agent=None, absolute_expires_at=None),
        make_record(now, "bob", attributes={}, ip="203.0.113.7"),
        make_record(now, "carol", attributes={"only": {"nested": [[1], [2.5], ["x"]]}}),
    ]


def upsert(
    session_id: str,
    record: Record,
    *,
    created: bool = True,
    create: bool = False,
    changed: Iterable[str] | None = None,
    removed: Iterable[str] = (),
    rotated_from: tuple[str, ...] = (),
    succeeds: str | None = None,
) -> Upsert:
    """The write of ``record``: every attribute carried, ``changed`` (default all) moved;
    ``create``: a create-if-absent (a session a service just started)."""
    encoded = encode_attributes(record["attributes"])
    return upsert_of(
        session_id,
        record,
        encoded,
        changed=changed,
        removed=removed,
        created=created,
        rotated_from=rotated_from,
        create=create,
        succeeds=succeeds,
    )


def delete(session_id: str, record: Record, ended_at: float) -> Delete:
    """The end of a session."""
    return Delete(session_id, record["username"], ended_at)


def canonical(value: Any) -> str:
    """JSON text that tells apart what ``==`` does not (1, 1.0 and True; key order aside)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def assert_same_record(found: Any, expected: Mapping[str, Any], where: str) -> None:
    """``found`` is ``expected`` field by field, with the same JSON types throughout."""
    assert found is not None, f"{where}: the store lost the session"
    assert isinstance(found, Mapping), f"{where}: loaded {type(found).__name__}, not a record"
    assert set(found) == set(expected), f"{where}: fields {sorted(found)} != {sorted(expected)}"
    for name, value in expected.items():
        got = found[name]
        assert canonical(got) == canonical(value), f"{where}: {name} is {got!r}, wrote {value!r}"
