"""Copy live sessions from one store to another, in chunks, keeping everything a session is.

Semantics (see the README for the why):

- Every live source session is written to the target as a full-record upsert
  (``created=True``), through the target's ordinary write path: ids, users, attributes,
  client data and timestamps are kept, so the remaining lifetime is kept too.
  Expired sessions are skipped.
- Running it again converges: a copy the target already holds is merged the way every
  write is (attributes from the source win, expiries are never shortened).
- A session the target has ended (tombstoned) is never brought back; it is counted as
  refused. A session the source has ended (a tombstone in a sessions file) is ended in the
  target too when the target still holds it, so a logout between two runs holds.
- The source is only read; it is checked in a first pass before anything is written, so a
  corrupt source is refused whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pooled_sessions import codec
from pooled_sessions.adapters.protocol import Store
from pooled_sessions.codec import (
    Delete,
    Operation,
    Record,
    Upsert,
    WriteResult,
    encode_stored,
    is_expired,
    short_id,
)
from pooled_sessions.errors import ConfigError, CorruptStoreError, SessionDataError
from pooled_sessions.redaction import redact
from pooled_sessions.tools.batch_writer import BackgroundWriter
from pooled_sessions.tools.inspect import Inventory, survey
from pooled_sessions.tools.progress import Progress, Silent
from pooled_sessions.tools.stores import Source
from pooled_sessions.tools.verify import Verification, verify

DEFAULT_BATCH_SIZE = 2000
Clock = Callable[[], float]


@dataclass(slots=True, kw_only=True)
class MigrationReport:
    """What a migration found and did."""

    source: str
    target: str
    found: Inventory
    dry_run: bool = False
    copied: int = 0
    refused: int = 0
    ended: int = 0
    batches: int = 0
    seconds: float = 0.0
    verification: Verification | None = None
    refused_ids: set[str] = field(default_factory=set, repr=False)

    @property
    def rate(self) -> float:
        """Sessions copied per second."""
        return self.copied / self.seconds if self.seconds > 0 else 0.0


def upsert_of(session_id: str, record: Record) -> Upsert:
    """The full-record write that recreates ``record`` in any store."""
    try:
        attributes = encode_stored(record["attributes"])
    except SessionDataError as exc:
        raise CorruptStoreError(f"session {short_id(session_id)} cannot be copied: {exc}") from None
    return codec.upsert_of(session_id, record, attributes)


def migrate(
    source: Source,
    target: Store,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    check: bool = False,
    progress: Progress | None = None,
    clock: Clock = time.time,
) -> MigrationReport:
    """Copy every live session of ``source`` into ``target``; see the module docstring."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    progress = progress or Silent()
    progress.start("checking source", None)
    found = survey(source, clock(), tick=progress.advance)
    progress.finish()
    shown = redact(target.url)
    report = MigrationReport(source=source.url, target=shown, found=found, dry_run=dry_run)
    if not dry_run:
        started = time.perf_counter()
        progress.start("copying", found.live)
        _copy(source, target, report, _batches(source, batch_size, clock), progress)
        _end_tombstoned(source, target, report, batch_size, clock)
        progress.finish()
        report.seconds = time.perf_counter() - started
    if check:
        progress.start("verifying", found.live)
        report.verification = verify(
            source, target, batch_size, report.refused_ids, clock, progress.advance
        )
        progress.finish()
    return report


def _batches(source: Source, size: int, clock: Clock) -> Iterator[list[Operation]]:
    """Upserts of the live records, ``size`` at a time (a file target appends each to its
    journal, and rewrites its snapshot only as often as the journal's bound says)."""
    batch: list[Operation] = []
    now = clock()
    for sid, record in source.records():
        if is_expired(record, now):
            continue
        batch.append(upsert_of(sid, record))
        if len(batch) >= size:
            yield batch
            batch, now = [], clock()
    if batch:
        yield batch


def _copy(
    source: Source,
    target: Store,
    report: MigrationReport,
    batches: Iterator[list[Operation]],
    progress: Progress,
) -> None:
    """Write the batches; the next one is read from the source while one is being written."""

    def written(batch: Sequence[Operation], result: WriteResult) -> None:
        report.batches += 1
        report.copied += len(batch) - len(result.refused)
        report.refused += len(result.refused)
        report.refused_ids.update(result.refused)
        progress.advance(len(batch))

    writer = BackgroundWriter(target, written)
    try:
        for batch in batches:
            writer.put(batch)
    except BaseException:
        writer.cancel()
        raise
    writer.close()


def _end_tombstoned(
    source: Source, target: Store, report: MigrationReport, size: int, clock: Clock
) -> None:
    """End in ``target`` the sessions the source ended that ``target`` still holds."""
    ends: list[Operation] = []
    for sid, ended_at in source.tombstones().items():
        held = target.load(sid)
        if held is not None:
            ends.append(Delete(sid, held["username"], ended_at))
        if len(ends) >= size:
            target.write(ends, clock())
            report.ended += len(ends)
            ends = []
    if ends:
        target.write(ends, clock())
        report.ended += len(ends)
