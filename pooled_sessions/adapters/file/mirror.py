"""What a process knows of a sessions file, and the steps that keep it current.

`FileMirror` holds the parsed state (a `RecordTable`), the snapshot and journal it was
read from (held open, see `fsio.Pin`) and the journal offset it has applied. Its
operations are generators that yield the file I/O they need (`Look`, `OpenPair`,
`ReadFrom`, `Append`, `Replace`) and pause points (None); the blocking store runs them
with `store.run`, the asyncio store in worker threads and slices of the event loop.

A write appends one line to the journal; when the journal outgrows `bound()` the write
folds everything into a new snapshot instead (generation + 1) and starts an empty
journal for it. A reader that finds the journal grown applies the new lines only; one
that finds a new snapshot (or journal) reads both again.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Generator, Sequence
from typing import Any, NamedTuple, TypeVar

from pooled_sessions.adapters.file import fsio, journal
from pooled_sessions.adapters.file.stream import DocumentStream
from pooled_sessions.adapters.record_table import RecordTable
from pooled_sessions.codec import (
    FORMAT_VERSION,
    Changes,
    Operation,
    WriteResult,
    decode_snapshot,
)
from pooled_sessions.errors import CorruptStoreError

T = TypeVar("T")
logger = logging.getLogger("session_service")
PACE = 128
"""Records (or operations) handled between two pause points of the file steps."""
JOURNAL_MIN_BYTES = 1 << 20
"""A journal is folded into a new snapshot once it would pass this size ..."""
JOURNAL_SHARE = 0.5
"""... and this share of the snapshot's size, whichever is larger."""
VOUCH_SECONDS = 1.0
"""How long a look by path vouches for the files held (`FileMirror.still`): a file moved
by hand within a clock tick of its last change keeps its ctime, and is seen after this."""


class Look(NamedTuple):
    """File step: stat the snapshot and the journal; answered with an `fsio.Sight`."""


class OpenPair(NamedTuple):
    """File step: open and read the snapshot and the journal as one pair (`fsio.Pair`)."""


class ReadFrom(NamedTuple):
    """File step: the bytes of a held file from ``offset`` to its end."""

    held: fsio.Pin
    offset: int


class Append(NamedTuple):
    """File step: append ``data`` to the journal at ``at`` (`fsio.append`); answered with
    the `fsio.Appended`, which the store makes durable once it lets go of the lock. It is
    always a commit's last step under the lock, so a store may let go right after it."""

    inode: tuple[int, int]
    at: int
    data: bytes


class Replace(NamedTuple):
    """File step: replace ``target`` atomically with ``pieces``; answered with its `fsio.Pin`."""

    target: str
    pieces: list[bytes]


FileStep = Look | OpenPair | ReadFrom | Append | Replace | None
Steps = Generator[FileStep, Any, T]


class FileMirror:
    """The in-memory copy of a snapshot and its journal.

    ``paced``: parse a changed file a few hundred records at a time between pause points
    (for an event loop), rather than in one step.
    """

    def __init__(self, path: str, *, paced: bool = False) -> None:
        self.path = path
        self.journal_path = journal.path_of(path)
        self.paced = paced
        self.table = RecordTable()
        self.generation = 0  # of the snapshot mirrored: 0 for none, or a version-1 file
        self.version = FORMAT_VERSION
        self.snapshot: fsio.Pin | None = None
        self.journal: fsio.Pin | None = None
        self.live = False  # the journal extends the snapshot mirrored
        self.offset = 0  # the end of the last whole journal line: where the next one goes
        self.newest = 0  # the highest generation either file named
        self.known = False  # False before the first read and after a failure: read again
        self.suspect = False  # a journal append failed: the next write starts a new snapshot
        self.unsynced: list[int] = []  # descriptors of lines appended, for `fsio.sync`
        self._vouched: tuple[fsio.Pin, fsio.Pin, int, int, float] | None = None
        """The files held when a look by path last found them mirrored, their ctimes, and
        until when (monotonic) that look is trusted."""

    def behind(self, sight: fsio.Sight) -> bool:
        """True when the files are not (or may not be) what is mirrored; when they are,
        their ctimes are kept for `still`."""
        if not self.known:
            return True
        if self.snapshot is None:
            if sight.snapshot is not None:
                return True
        elif not self.snapshot.unchanged(sight.snapshot):
            return True
        if self.journal is None or sight.journal is None:
            return self.journal is not None or sight.journal is not None
        if not self.journal.is_file(sight.journal) or sight.journal.st_size != self.offset:
            return True
        if self.snapshot is not None and sight.snapshot is not None:
            ctimes = sight.snapshot.st_ctime_ns, sight.journal.st_ctime_ns
            until = time.monotonic() + VOUCH_SECONDS
            self._vouched = (self.snapshot, self.journal, *ctimes, until)
        return False

    def still(self) -> bool:
        """True when the files held open show nothing written since a look by path found
        them mirrored (`behind`): an ``fstat`` of each, where a stat of each path walks it.

        A file replaced by a rename (every writer's way) or deleted has no link left; one
        appended to has grown; one edited, linked or moved has a new ctime (unless within
        the file system's clock tick of the last change: hence `VOUCH_SECONDS`). False
        (look by path) when any of that may have happened, or nothing was vouched for.
        """
        vouched, snapshot, journal = self._vouched, self.snapshot, self.journal
        if (
            vouched is None
            or snapshot is None
            or journal is None
            or vouched[0] is not snapshot
            or vouched[1] is not journal
        ):
            return False
        if time.monotonic() > vouched[4]:
            return False
        try:
            snapshot_now, journal_now = snapshot.stat(), journal.stat()
        except OSError:  # let go meanwhile: the look by path says what is there
            return False
        return (
            snapshot_now.st_nlink == 1
            and journal_now.st_nlink == 1
            and snapshot_now.st_ctime_ns == vouched[2]
            and journal_now.st_ctime_ns == vouched[3]
            and snapshot.unchanged(snapshot_now)
            and journal_now.st_size == self.offset
        )

    def bound(self) -> int:
        """The size past which the journal is folded into a new snapshot."""
        snapshot = self.snapshot.size if self.snapshot is not None else 0
        return max(JOURNAL_MIN_BYTES, int(snapshot * JOURNAL_SHARE))

    # -- reading ---------------------------------------------------------------------------

    def refreshing(
        self, sight: fsio.Sight | None = None, *, settled: bool = False
    ) -> Steps[Changes]:
        """Catch up with the files; what they held that this mirror lacked: the sessions
        new journal lines name, or True for a snapshot read again (see `Changes`).

        ``settled``: the caller holds the lock file, so no writer is under way and a
        damaged journal line followed by whole ones is damage, not a write in progress.
        """
        try:
            if sight is None:
                sight = yield Look()
            if not self.behind(sight):
                return False
            if self._grown(sight) and self.journal is not None:
                data = yield ReadFrom(self.journal, self.offset)
                start, named = self.offset, set[str]()
                self.offset = yield from self._applying(self.table, data, start, settled, named)
                self.behind(sight)  # read up to what it saw: it vouches for the files
                return frozenset(named) if named else self.offset != start
            return (yield from self._reloading(settled))
        except BaseException:
            self.release()
            raise

    def _grown(self, sight: fsio.Sight) -> bool:
        """Only new lines in the journal this mirror follows (the snapshot is unchanged)."""
        found = sight.journal
        return (
            self.live
            and self.journal is not None
            and found is not None
            and self.journal.is_file(found)
            and found.st_size > self.offset
        )

    def _applying(
        self,
        table: RecordTable,
        data: bytes,
        base: int,
        settled: bool,
        named: set[str] | None = None,
    ) -> Steps[int]:
        """Replay the whole lines of ``data`` (journal bytes from ``base``); their end.
        ``named`` gathers the ids of the sessions they wrote, ended or dropped."""
        end, count = base, 0
        for change, after in journal.read_changes(data, self.journal_path, base, settled=settled):
            journal.replay(table, change)
            if named is not None:
                named.update(change.records, change.ended, change.dropped)
            end = after
            count += change.size()
            if self.paced and count >= PACE:
                count = 0
                yield None
        return end

    def _reloading(self, settled: bool) -> Steps[bool]:
        """Read the snapshot and the journal whole."""
        pair: fsio.Pair = yield OpenPair()
        try:
            table, generation, version = yield from self._parsing(pair)
            live, offset, extends = yield from self._joining(pair, table, generation, settled)
        except BaseException:
            pair.close()
            raise
        if self.known and self.snapshot is not None and pair.snapshot is None:
            logger.warning("sessions file %s disappeared; starting empty", self.path)
        changed = self.known or pair.snapshot is not None or pair.journal is not None
        self._let_go()
        self.table, self.generation, self.version = table, generation, version
        self.snapshot, self.journal = pair.snapshot, pair.journal
        self.live, self.offset, self.newest = live, offset, max(generation, extends)
        self.known = True
        return changed

    def _parsing(self, pair: fsio.Pair) -> Steps[tuple[RecordTable, int, int]]:
        """The snapshot's table, generation and format version."""
        if pair.snapshot is None:
            return RecordTable(), 0, FORMAT_VERSION
        if not self.paced:
            snapshot = decode_snapshot(pair.snapshot_data, self.path)
            table = RecordTable(snapshot.sessions, snapshot.tombstones)
            return table, snapshot.generation, snapshot.version
        stream = DocumentStream(self.path)
        table = RecordTable()
        text = io.TextIOWrapper(io.BytesIO(pair.snapshot_data), encoding="utf-8", newline="")
        for count, (sid, record) in enumerate(stream.read(text), 1):
            table.add(sid, record)
            if not count % PACE:
                yield None
        table.tombstones = dict(stream.tombstones)
        return table, stream.generation, stream.version

    def _joining(
        self, pair: fsio.Pair, table: RecordTable, generation: int, settled: bool
    ) -> Steps[tuple[bool, int, int]]:
        """Apply the journal if it extends this snapshot: (live, offset, generation named).

        A journal of an older generation was folded into this snapshot by a compaction
        that had not yet replaced it; one of a newer generation lacks its snapshot.
        """
        if pair.journal is None:
            return False, 0, 0
        data = pair.journal_data
        extends, start = journal.read_header(data, self.journal_path)
        if extends == generation:
            end = yield from self._applying(table, data[start:], start, settled)
            return True, end, extends
        lines = journal.read_changes(data[start:], self.journal_path, start, settled=settled)
        if extends > generation and next(lines, None) is not None:
            held = f"generation {generation}" if pair.snapshot is not None else "missing"
            raise CorruptStoreError(
                f"{self.journal_path} extends generation {extends} of {self.path}, which is "
                f"{held}; both were left as they are (move them aside to start anew)"
            )
        return False, len(data), extends

    # -- writing (the caller holds the lock file) ------------------------------------------

    def writing(self, operations: Sequence[Operation], now: float) -> Steps[WriteResult]:
        """Merge one batch and commit it: one journal line, or a new snapshot.

        ``now`` decides which records are expired, hence not held (see `RecordTable.apply`).
        """
        reloaded = yield from self.refreshing(settled=True)
        try:
            refused: set[str] = set()
            taken: set[str] = set()
            for start in range(0, len(operations), PACE):
                result = self.table.apply(operations[start : start + PACE], now)
                refused |= result.refused
                taken |= result.taken
                yield None
            unwritten = refused | taken
            touched = [op.session_id for op in operations if op.session_id not in unwritten]
            line = yield from self._line_of(list(dict.fromkeys(touched)))
            if line is not None:
                yield from self._committing(line)
        except BaseException:
            self.release()  # the table may be ahead of the files
            raise
        return WriteResult(frozenset(refused), reloaded, frozenset(taken))

    def purging(self, now: float, tombstone_ttl: float) -> Steps[int]:
        """Drop expired records and old tombstones, committing a line if any went."""
        yield from self.refreshing(settled=True)
        try:
            expired, old = self.table.purge_ids(now, tombstone_ttl)
            line = journal.change_line((), None, expired, old)
            if line is not None:
                yield from self._committing(line)
        except BaseException:
            self.release()
            raise
        return len(expired)

    def compacting(self) -> Steps[bool]:
        """Fold the journal into a new snapshot; False when there was nothing to fold."""
        yield from self.refreshing(settled=True)
        header = len(journal.header(self.generation))
        current = self.version == FORMAT_VERSION and not self.suspect
        if (self.snapshot is None and self.journal is None) or (
            current and self.live and self.offset == header
        ):
            return False
        try:
            yield from self._compacting()
        except BaseException:
            self.release()
            raise
        return True

    def _line_of(self, session_ids: list[str]) -> Steps[bytes | None]:
        """The journal line that records these sessions as the table now holds them."""
        records, tombstones = self.table.records, self.table.tombstones
        members: list[str] = []
        ended: dict[str, float] = {}
        for start in range(0, len(session_ids), PACE):
            chunk = session_ids[start : start + PACE]
            members += self.table.members(sid for sid in chunk if sid in records)
            ended.update((sid, tombstones[sid]) for sid in chunk if sid in tombstones)
            yield None
        return journal.change_line(members, ended)

    def _committing(self, line: bytes) -> Steps[None]:
        if self.snapshot is None or self.version != FORMAT_VERSION or self.suspect:
            yield from self._compacting()
        elif not self.live or self.journal is None:
            yield from self._starting_journal(line)
        elif self.offset + len(line) > self.bound():
            yield from self._compacting()
        else:
            try:
                appended = yield Append(self.journal.inode, self.offset, line)
                self.offset = appended.end
                if appended.fd != fsio.SYNCED:
                    self.unsynced.append(appended.fd)
            except BaseException:
                self.suspect = True  # never trusted again: the next write starts a snapshot
                raise

    def _compacting(self) -> Steps[None]:
        """Write the whole table as snapshot generation + 1, then its empty journal."""
        generation = self.newest + 1
        pieces = []
        for part in self.table.document_parts(generation):
            # A lone surrogate can only have come from the file, as a JSON escape inside a
            # string (calls refuse them): "backslashreplace" writes that same escape back.
            pieces.append(part.encode("utf-8", "backslashreplace"))
            yield None
        snapshot = yield Replace(self.path, pieces)
        self._let_go(journal=False)
        self.snapshot, self.generation, self.version = snapshot, generation, FORMAT_VERSION
        self.newest, self.live = generation, False
        yield from self._starting_journal(b"")
        self.suspect = False

    def _starting_journal(self, line: bytes) -> Steps[None]:
        """Replace the journal with a new one for this snapshot, holding ``line``."""
        head = journal.header(self.generation)
        held = yield Replace(self.journal_path, [head, line])
        self._vouched = None
        if self.journal is not None:
            self.journal.close()
        self.journal, self.live, self.offset = held, True, len(head) + len(line)

    def take_unsynced(self) -> list[int]:
        """The descriptors of the lines appended since the last call, to `fsio.sync`."""
        taken, self.unsynced = self.unsynced, []
        return taken

    def _let_go(self, *, journal: bool = True) -> None:
        """Close the files held (the snapshot, and the journal unless told not to)."""
        self._vouched = None
        for held in (self.snapshot, self.journal if journal else None):
            if held is not None:
                held.close()

    def release(self) -> None:
        """Let the files go and read them again before the next use (after a failure, a
        cancel, or when the store is closed)."""
        self._let_go()
        self.snapshot = self.journal = None
        self.known = self.live = False
