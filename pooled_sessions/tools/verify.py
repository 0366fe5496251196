"""Check a migration: every live source session, compared with the target's copy.

Both sides get a count and an order-independent checksum (a sum of per-session digests),
so two stores can be compared without holding either in memory. Times within a
millisecond of the source's count as equal: Redis keeps expiries in whole milliseconds.

The target is read a batch at a time, and a digest is taken over a session's form on that
target (`copies`): on Redis the fields of its hash, so a faithful copy is recognised
without being decoded; elsewhere its canonical JSON. A copy found equal to its source
record has the source's digest, so it is not encoded again. Checksums compare the two
sides of one run: a source's checksum depends on the kind of target it is checked against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar

from pooled_sessions.adapters.protocol import Store
from pooled_sessions.codec import Record, is_expired, short_id
from pooled_sessions.errors import CorruptStoreError, SessionDataError
from pooled_sessions.tools.copies import IDENTICAL, Batch, Copy, Fields, Sourced, target_of
from pooled_sessions.tools.stores import Source

T = TypeVar("T")
R = TypeVar("R")
Form = Callable[[Record], Fields]
CHECKSUM_BITS = 128
MAX_EXAMPLES = 5
TIME_TOLERANCE = 0.001
_TIMES = ("created_at", "last_accessed_at", "expires_at", "absolute_expires_at")
_KEYS = Record.__required_keys__


def form_of(form: Form, session_id: str, record: Record) -> Fields:
    """``form(record)``; a record no store could hold is a corrupt one."""
    try:
        return form(record)
    except SessionDataError as exc:
        raise CorruptStoreError(f"session {short_id(session_id)} cannot be read: {exc}") from None


def digest(session_id: str, fields: Fields) -> int:
    """A 128-bit digest of one session's id and form."""
    parts = [session_id.encode(), *chain.from_iterable(fields.items())]
    text = b"\0".join(parts)
    if text.count(b"\0") != len(parts) - 1:  # a NUL within a part: give each part's length
        text = b"\1" + b"".join(b"%d:%s" % (len(part), part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text, digest_size=CHECKSUM_BITS // 8).digest())


def aligned(copy: Record, original: Record) -> Record:
    """``copy`` with each time that is within a millisecond of ``original``'s set to it."""
    fields: dict[str, Any] = dict(copy)
    for name in _TIMES:
        mine, theirs = original[name], fields[name]  # type: ignore[literal-required]
        if mine is not None and theirs is not None and abs(mine - theirs) <= TIME_TOLERANCE:
            fields[name] = mine
    return fields  # type: ignore[return-value]


def same(copy: Record, original: Record) -> bool:
    """True when ``aligned(copy, original)`` has ``original``'s form, found without making
    either (False may also mean: only the forms can tell)."""
    if copy.keys() != _KEYS or original.keys() != _KEYS:
        return False
    for name in _TIMES:
        mine, theirs = original[name], copy[name]  # type: ignore[literal-required]
        if mine is None or theirs is None:
            if mine is not theirs:
                return False
        elif abs(mine - theirs) > TIME_TOLERANCE:
            return False
    return (
        copy["username"] == original["username"]
        and copy["ip"] == original["ip"]
        and copy["user_agent"] == original["user_agent"]
        # equal reprs: equal values of equal types (1, 1.0 and True differ in JSON too)
        and repr(copy["attributes"]) == repr(original["attributes"])
    )


@dataclass(slots=True, kw_only=True)
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

    def add(self, sessions: Batch, copies: Sequence[Copy], form: Form) -> None:
        """Account for source sessions and the target's copy of each (None: missing)."""
        mine_sum = theirs_sum = 0
        for (session_id, record, fields), copy in zip(sessions, copies, strict=True):
            mine = digest(session_id, fields)
            mine_sum += mine
            if copy is None:
                self.missing += 1
                self._example(session_id, "missing")
                continue
            if copy is IDENTICAL or same(copy, record):
                theirs = mine
            else:
                theirs = digest(session_id, form_of(form, session_id, aligned(copy, record)))
                if theirs != mine:
                    self.different += 1
                    self._example(session_id, "differs")
            theirs_sum += theirs
            self.target_count += 1
        self.source_count += len(sessions)
        self.source_sum = (self.source_sum + mine_sum) % (1 << CHECKSUM_BITS)
        self.target_sum = (self.target_sum + theirs_sum) % (1 << CHECKSUM_BITS)

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
    check = target_of(target)
    batches = _batches(source, batch_size, ended_in_target, clock, check.form)
    for (kept, live), copies in _read_ahead(batches, lambda batch: check.read(batch[0])):
        result.ended_in_target += live - len(kept)
        result.add(kept, copies, check.form)
        tick(live)
    result.target_total = target.count()
    return result


def _batches(
    source: Source, size: int, ended: Collection[str], clock: Callable[[], float], form: Form
) -> Iterator[tuple[list[Sourced], int]]:
    """The live source sessions not in ``ended``, each batch with the live sessions read."""
    batch: list[Sourced] = []
    live, now = 0, clock()
    for sid, record in source.records():
        if is_expired(record, now):
            continue
        live += 1
        if sid not in ended:
            batch.append((sid, record, form_of(form, sid, record)))
        if live >= size:
            yield batch, live
            batch, live, now = [], 0, clock()
    if live:
        yield batch, live


def _read_ahead(batches: Iterator[T], read: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """Each batch with what ``read`` makes of it; a thread reads one batch while the next
    is taken from ``batches`` (the target's round trips overlap the source's reading)."""
    with ThreadPoolExecutor(1, thread_name_prefix="pooled-sessions-verify") as worker:
        ahead: tuple[T, Future[R]] | None = None
        for batch in batches:
            current = (batch, worker.submit(read, batch))
            if ahead is not None:
                yield ahead[0], ahead[1].result()
            ahead = current
        if ahead is not None:
            yield ahead[0], ahead[1].result()
