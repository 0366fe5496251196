"""Check a migration: every live source session, compared with the target's copy.

Both sides get a count and an order-independent checksum (a sum of per-session digests),
so two stores can be compared without holding either in memory. Times within a
millisecond of the source's count as equal: Redis keeps expiries in whole milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pooled_sessions.adapters.protocol import Store
from pooled_sessions.codec import Record, is_expired, short_id
from pooled_sessions.tools.stores import Source

CHECKSUM_BITS = 128
MAX_EXAMPLES = 5
TIME_TOLERANCE = 0.001
_TIMES = ("created_at", "last_accessed_at", "expires_at", "absolute_expires_at")


def canonical(record: Mapping[str, Any]) -> str:
    """One text per session content: sorted keys, times as floats."""
    fields = dict(record)
    for name in _TIMES:
        if fields.get(name) is not None:
            fields[name] = float(fields[name])
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def aligned(copy: Record, original: Record) -> dict[str, Any]:
    """``copy`` with each time that is within a millisecond of ``original``'s set to it."""
    fields: dict[str, Any] = dict(copy)
    for name in _TIMES:
        mine, theirs = original[name], fields[name]  # type: ignore[literal-required]
        if mine is not None and theirs is not None and abs(mine - theirs) <= TIME_TOLERANCE:
            fields[name] = mine
    return fields


def digest(session_id: str, record: Mapping[str, Any]) -> int:
    """A 128-bit digest of one session's id and content."""
    text = f"{session_id}\0{canonical(record)}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=CHECKSUM_BITS // 8).digest())


@dataclass(slots=True)
class Verification:
    """Counts and checksums of the source's live sessions and of the target's copies."""

    source_count: int = 0
    source_sum: int = 0
    target_count: int = 0
    target_sum: int = 0
    missing: int = 0
    different: int = 0
    ended_in_target: int = 0
    target_total: int | None = None
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the target holds an identical copy of every live source session."""
        return (
            self.missing == self.different == 0
            and self.source_count == self.target_count
            and self.source_sum == self.target_sum
        )

    @property
    def source_checksum(self) -> str:
        return _hex(self.source_sum)

    @property
    def target_checksum(self) -> str:
        return _hex(self.target_sum)

    def add(self, session_id: str, record: Record, copy: Record | None) -> None:
        """Account for one source session and the target's copy of it (None: missing)."""
        mine = digest(session_id, record)
        self.source_count += 1
        self.source_sum = (self.source_sum + mine) % (1 << CHECKSUM_BITS)
        if copy is None:
            self.missing += 1
            self._example(session_id, "missing")
            return
        theirs = digest(session_id, aligned(copy, record))
        self.target_count += 1
        self.target_sum = (self.target_sum + theirs) % (1 << CHECKSUM_BITS)
        if theirs != mine:
            self.different += 1
            self._example(session_id, "differs")

    def _example(self, session_id: str, what: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{short_id(session_id)} {what}")


def _hex(value: int) -> str:
    return f"{value:0{CHECKSUM_BITS // 4}x}"


def verify(
    source: Source,
    target: Store,
    batch_size: int,
    ended_in_target: Collection[str],
    clock: Callable[[], float],
    tick: Callable[[int], None],
) -> Verification:
    """Compare every live source session with the target's copy of it.

    Sessions in ``ended_in_target`` (refused by the target because it ended them) are
    counted apart; they are meant to be absent.
    """
    result = Verification()
    now, pending = clock(), 0
    for sid, record in source.records():
        if is_expired(record, now):
            continue
        if sid in ended_in_target:
            result.ended_in_target += 1
        else:
            result.add(sid, record, target.load(sid))
        pending += 1
        if pending >= batch_size:
            tick(pending)
            now, pending = clock(), 0
    tick(pending)
    result.target_total = target.count()
    return result
