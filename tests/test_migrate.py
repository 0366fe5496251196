"""Migration between every pair of stores, resumption, refusal of corrupt sources, streaming."""

from __future__ import annotations

import json
import multiprocessing
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from pooled_sessions.adapters.file import mirror
from pooled_sessions.adapters.file import stream as docstream
from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Operation, Record, WriteResult, decode_document
from pooled_sessions.errors import CorruptStoreError, StoreUnavailableError
from pooled_sessions.tools.migrate import MigrationReport, migrate, upsert_of
from pooled_sessions.tools.stores import FileSource, open_source, open_target, parse
from tests import storekit
from tests.filekit import stored
from tests.storekit import SETTINGS, assert_same, make_record, sample, session_id

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("aiofile", id="aiofile"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]
UrlFactory = Callable[[str], str]


@pytest.fixture
def url_for(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], UrlFactory]:
    """``url_for(kind)(name)``: a fresh store URL of that kind for this test.

    Redis stores share the session's server (or cluster), each under a prefix of its own.
    """

    def factory(kind: str) -> UrlFactory:
        if kind == "memory":
            return lambda name: storekit.memory_url()
        if kind == "file":
            return lambda name: storekit.file_url(tmp_path, name)
        if kind == "aiofile":
            return lambda name: storekit.aiofile_url(tmp_path, name)
        fixture = {"redis": "redis_server", "cluster": "redis_cluster"}[kind]
        server = request.getfixturevalue(fixture)
        return lambda name: storekit.prefixed(server.url, name)

    return factory


def run(
    source_url: str,
    target_url: str,
    *,
    batch_size: int = 2000,
    dry_run: bool = False,
    check: bool = False,
) -> MigrationReport:
    source = open_source(source_url, SETTINGS)
    target = open_target(target_url, SETTINGS)
    try:
        return migrate(source, target, batch_size=batch_size, dry_run=dry_run, check=check)
    finally:
        target.close()
        source.close()


def _seed_source(url: str, now: float) -> tuple[dict[str, Record], list[str]]:
    """Live sessions, two expired ones and one ended one; returns the live and the gone ids."""
    live = sample(12, now)
    expired = {
        session_id(100): make_record(100, now, expires_at=now - 5.0),
        session_id(101): make_record(101, now, absolute_expires_at=now - 1.0),
    }
    storekit.seed(url, {**live, **expired})
    ended = session_id(5)
    storekit.end(url, ended, live.pop(ended)["username"])
    return live, [*expired, ended]


@pytest.mark.parametrize("target_kind", KINDS)
@pytest.mark.parametrize("source_kind", KINDS)
def test_every_pair_copies_every_field(
    source_kind: str, target_kind: str, url_for: Callable[[str], UrlFactory]
) -> None:
    source_url, target_url = url_for(source_kind)("src"), url_for(target_kind)("dst")
    now = time.time()
    live, gone = _seed_source(source_url, now)
    report = run(source_url, target_url, batch_size=5, check=True)
    assert report.copied == len(live) == report.found.live
    found = storekit.load_all(target_url, [*live, *gone])
    for sid, record in live.items():
        assert_same(record, found[sid], f"{source_kind}->{target_kind} {sid[:9]}")
    assert all(found[sid] is None for sid in gone)
    assert report.verification is not None and report.verification.ok
    again = run(source_url, target_url, batch_size=7, check=True)
    assert again.copied == len(live)
    assert again.verification is not None and again.verification.ok
    assert storekit.count(target_url) == len(live)


class Flaky:
    """A target store that fails its ``fail_on``-th write, like a connection lost mid-run."""

    def __init__(self, url: str, fail_on: int) -> None:
        self._store = open_target(url, SETTINGS)
        self.url = self._store.url
        self.writes = 0
        self._fail_on = fail_on

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        self.writes += 1
        if self.writes == self._fail_on:
            raise StoreUnavailableError("connection lost")
        return self._store.write(operations, now)

    def close(self) -> None:
        self._store.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.parametrize("target_kind", KINDS)
def test_interrupted_migration_resumes_and_converges(
    target_kind: str, url_for: Callable[[str], UrlFactory]
) -> None:
    source_url, target_url = url_for("file")("src"), url_for(target_kind)("dst")
    live = sample(40)
    storekit.seed(source_url, live)
    flaky = Flaky(target_url, fail_on=3)
    try:
        with pytest.raises(StoreUnavailableError):
            migrate(open_source(source_url, SETTINGS), flaky, batch_size=10)  # type: ignore[arg-type]
        assert flaky.writes == 3
    finally:
        flaky.close()
    assert 0 < storekit.count(target_url) < len(live)
    report = run(source_url, target_url, batch_size=10, check=True)
    assert report.verification is not None and report.verification.ok
    assert storekit.count(target_url) == len(live)


def test_corrupt_source_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    source_url, target_url = storekit.file_url(tmp_path, "src"), storekit.file_url(tmp_path, "dst")
    storekit.seed(source_url, sample(30))
    path = Path(source_url)
    text = path.read_text()
    broken = text.replace('"username":"user-1"', '"username":17', 1)
    assert broken != text
    path.write_text(broken)
    before = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(CorruptStoreError, match="bad 'username'"):
        run(source_url, target_url, batch_size=5)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert not Path(target_url).exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["dst.json.lock", "src.json", "src.json.journal", "src.json.lock"]


def test_session_ended_in_target_is_not_brought_back(url_for: Callable[[str], UrlFactory]) -> None:
    source_url, target_url = url_for("file")("src"), url_for("file")("dst")
    live = sample(6)
    storekit.seed(source_url, live)
    run(source_url, target_url)
    victim = session_id(2)
    storekit.end(target_url, victim, live[victim]["username"])
    report = run(source_url, target_url, check=True)
    assert report.refused == 1 and report.copied == 5
    assert storekit.load_all(target_url, [victim]) == {victim: None}
    check = report.verification
    assert check is not None and check.ok and check.ended_in_target == 1


def test_session_ended_in_source_after_a_run_ends_in_target(
    url_for: Callable[[str], UrlFactory],
) -> None:
    source_url, target_url = url_for("file")("src"), url_for("memory")("dst")
    live = sample(6)
    storekit.seed(source_url, live)
    run(source_url, target_url)
    victim = session_id(3)
    storekit.end(source_url, victim, live[victim]["username"])
    report = run(source_url, target_url)
    assert report.ended == 1
    assert storekit.load_all(target_url, [victim]) == {victim: None}
    assert storekit.count(target_url) == 5


def test_dry_run_reads_but_writes_nothing(tmp_path: Path) -> None:
    source_url, target_url = storekit.file_url(tmp_path, "src"), storekit.memory_url()
    storekit.seed(source_url, sample(9))
    report = run(source_url, target_url, dry_run=True)
    assert (report.found.live, report.copied, report.batches) == (9, 0, 0)
    assert storekit.count(target_url) == 0


def test_verify_reports_missing_and_different_copies(tmp_path: Path) -> None:
    source_url, target_url = storekit.file_url(tmp_path, "src"), storekit.memory_url()
    live = sample(8)
    storekit.seed(source_url, live)
    run(source_url, target_url)
    changed = session_id(1)
    edited: Record = {**live[changed], "attributes": {"role": "root"}}
    storekit.write(target_url, [upsert_of(changed, edited)])
    report = run(source_url, target_url, dry_run=True, check=True)
    check = report.verification
    assert check is not None and not check.ok and check.different == 1 and check.missing == 0
    assert check.source_checksum != check.target_checksum
    assert check.examples == [f"{changed[:8]}… differs"]


def test_a_file_target_appends_and_rewrites_its_snapshot_a_logarithmic_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror, "JOURNAL_MIN_BYTES", 0)  # the bound: half the snapshot
    source_url, target_url = storekit.memory_url(), storekit.file_url(tmp_path, "dst")
    storekit.seed(source_url, sample(1000))
    report = run(source_url, target_url, batch_size=10)
    assert report.copied == 1000 and report.batches == 100
    found = stored(target_url)
    assert len(found.sessions) == 1000
    assert 5 <= found.generation <= 15, "the snapshot grows by half each time it is written"


class CountingSource:
    """A source that records how many sessions had been read at each target write."""

    def __init__(self, records: Mapping[str, Record]) -> None:
        self.url = "memory://counting"
        self._records = records
        self.read = 0

    def records(self) -> Iterator[tuple[str, Record]]:
        self.read = 0
        for pair in self._records.items():
            self.read += 1
            yield pair

    def tombstones(self) -> Mapping[str, float]:
        return {}

    def close(self) -> None:
        pass


class Sink:
    """A target that keeps nothing but counts, and notes the source's read-ahead per write."""

    url = "memory://sink"

    def __init__(self, source: CountingSource | None = None) -> None:
        self.source = source
        self.ahead: list[int] = []
        self.written = 0

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        self.written += len(operations)
        if self.source is not None:
            self.ahead.append(self.source.read - self.written)
        return WriteResult()

    def load(self, session_id: str) -> Record | None:
        return None

    def count(self) -> int:
        return self.written


def test_source_is_read_two_batches_ahead_at_most() -> None:
    source = CountingSource(sample(95))
    sink = Sink(source)
    report = migrate(source, sink, batch_size=10)  # type: ignore[arg-type]
    assert report.copied == 95 and len(sink.ahead) == 10
    # one batch queued for the writer, one being filled (and the record that fills it)
    assert max(sink.ahead) <= 2 * 10 + 1


def _peak_bytes(path: str, chunk: int) -> int:
    """The peak of traced memory while ``path`` is migrated, in a process of its own (no
    other test's threads allocate meanwhile)."""
    docstream.CHUNK_CHARS = chunk
    tracemalloc.start()
    try:
        migrate(FileSource(parse(path)), Sink(), batch_size=500)  # type: ignore[arg-type]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_the_source_file_grows(tmp_path: Path) -> None:
    small, large = storekit.file_url(tmp_path, "small"), storekit.file_url(tmp_path, "large")
    storekit.seed(small, sample(2_000))
    storekit.seed(large, sample(16_000))
    assert Path(large).stat().st_size > 7 * Path(small).stat().st_size
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        peak_small, peak_large = pool.map(_peak_bytes, (small, large), (64 * 1024,) * 2)
    assert peak_large < 1.3 * peak_small, (peak_small, peak_large)


# -- the streamed file reader ---------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_stream_reads_what_the_file_store_reads(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docstream, "CHUNK_CHARS", chunk)
    url = storekit.file_url(tmp_path, "s")
    live = sample(15)
    storekit.seed(url, live)
    storekit.end(url, session_id(4), live[session_id(4)]["username"])
    storekit.seed(url, {session_id(20): make_record(20, time.time())})
    found = stored(url)
    assert found.lines == 2, "the end and the new session are in the journal"
    stream = docstream.StoreStream(url)
    records = dict(stream.records())
    assert records == found.sessions and session_id(4) not in records
    assert list(records)[-1] == session_id(20), "the journal's records follow the snapshot's"
    ended = {session_id(4): pytest.approx(time.time(), abs=60)}
    assert stream.tombstones == found.tombstones == ended
    assert JsonFileStore(StoreURL.parse(url), SETTINGS).compact()
    snapshot = docstream.DocumentStream(url)
    assert dict(snapshot.records()) == records, "the snapshot alone, once compacted"
    sessions, tombstones = decode_document(Path(url).read_bytes(), url)
    assert list(sessions) == list(dict(snapshot.records())) and snapshot.tombstones == tombstones


def test_stream_accepts_any_member_order_and_spacing(tmp_path: Path) -> None:
    record = make_record(1, time.time())
    document = {
        "tombstones": {"gone": 1.5},
        "sessions": {"abc": record},
        "version": 1,
        "format": "pooled_sessions",
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(document, indent=3))
    stream = docstream.DocumentStream(str(path))
    assert dict(stream.records()) == {"abc": record}
    assert stream.tombstones == {"gone": 1.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "expected '{'"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"format":"pooled_sessions","version":1,"sessions":{', "Expecting"),
        (b'{"format":"other","version":1,"sessions":{},"tombstones":{}}', "not a pooled_sessions"),
        (b'{"format":"pooled_sessions","version":9,"sessions":{},"tombstones":{}}', "version 9"),
        (b'{"format":"pooled_sessions","version":1,"sessions":{}}', "lacks its sessions"),
        (
            b'{"format":"pooled_sessions","version":1,"sessions":[],"tombstones":{}}',
            "not an object",
        ),
        (
            b'{"format":"pooled_sessions","version":1,"sessions":{"a b":{}},"tombstones":{}}',
            "invalid session id",
        ),
        (
            b'{"format":"pooled_sessions","version":1,"sessions":{},"tombstones":{"a":"x"}}',
            "bad time",
        ),
        (
            b'{"format":"pooled_sessions","version":1,"sessions":{},"tombstones":{}} []',
            "data after",
        ),
    ],
)
def test_stream_refuses_a_corrupt_file(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(CorruptStoreError, match=message):
        list(docstream.DocumentStream(str(path)).records())
    assert path.read_bytes() == content


def test_stream_of_a_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="no sessions file"):
        list(docstream.DocumentStream(str(tmp_path / "nope.json")).records())
