"""How `verify` reads a target: a batch of copies at a time, and the form of a session
its digests are taken over.

One round trip or one look at the file per batch, not one per session. A Redis store
sends its session hashes undecoded (one script call, or one pipeline on a cluster), and
a session's form there is the hash a full write of it leaves (`keys.record_hash`), so a
hash holding exactly the source session's form is known `IDENTICAL` without being
decoded. On any other store the form is one field, the record as canonical JSON, which is
quicker to make; a store with ``load_many`` (file, memory, aiofile) reads its table once
per batch, any other store id by id.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pooled_sessions.adapters.protocol import BulkLoadStore, Store
from pooled_sessions.adapters.redis import RedisStore
from pooled_sessions.adapters.redis.keys import decode_hash, record_hash
from pooled_sessions.codec import Record


class Same(enum.Enum):
    """A copy known to hold exactly the source's record."""

    IDENTICAL = "identical"


IDENTICAL = Same.IDENTICAL
Copy = Record | None | Literal[Same.IDENTICAL]
"""What the target holds for one source session: its record, None (missing) or IDENTICAL."""
Fields = dict[bytes, bytes]
"""A session's form, what its digest is taken over: named byte strings, in one order."""
Sourced = tuple[str, Record, Fields]
"""A source session: its id, its record and its form."""
Batch = Sequence[Sourced]
_TIMES = ("created_at", "last_accessed_at", "expires_at", "absolute_expires_at")
_JSON = b"json"
_encode = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Target:
    """The form of a session on one target, and how to read a batch of its copies."""

    form: Callable[[Record], Fields]
    read: Callable[[Batch], list[Copy]]


def target_of(store: Store) -> Target:
    """How to check copies in ``store``."""
    if isinstance(store, RedisStore):
        hashes = store.load_hashes
        return Target(
            record_hash, lambda batch: _judged(batch, hashes([s for s, _, _ in batch]), store.where)
        )
    if isinstance(store, BulkLoadStore):
        bulk = store

        def many(batch: Batch) -> list[Copy]:
            found = bulk.load_many([sid for sid, _, _ in batch])
            return [found[sid] for sid, _, _ in batch]

        return Target(json_form, many)
    return Target(json_form, lambda batch: [store.load(sid) for sid, _, _ in batch])


def canonical(record: Mapping[str, Any]) -> str:
    """One text per session content: sorted keys, times as floats."""
    fields = dict(record)
    for name in _TIMES:
        if fields.get(name) is not None:
            fields[name] = float(fields[name])
    return _encode(fields)


def json_form(record: Record) -> Fields:
    """The form of a session as one field: its canonical JSON."""
    return {_JSON: canonical(record).encode("utf-8", "surrogatepass")}


def _judged(batch: Batch, hashes: list[dict[Any, Any]], where: str) -> list[Copy]:
    """Each hash as IDENTICAL (it holds the source's form exactly), decoded (it differs),
    or None (gone)."""
    copies: list[Copy] = []
    for (sid, _, form), raw in zip(batch, hashes, strict=True):
        if not raw:
            copies.append(None)
        elif _as_bytes(raw) == form:
            copies.append(IDENTICAL)
        else:
            copies.append(decode_hash(sid, raw, where))
    return copies


def _as_bytes(raw: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """A hash reply as bytes, whatever the client's ``decode_responses``."""
    if isinstance(next(iter(raw)), bytes):
        return raw
    return {key.encode(): value.encode() for key, value in raw.items()}
