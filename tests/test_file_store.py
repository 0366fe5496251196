"""The JSON file store on real files: format, atomic replace, modes, strays, corrupt files."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pooled_sessions import CorruptStoreError, SessionService, StoreUnavailableError
from pooled_sessions.adapters.file import mirror
from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.clock import FastForwardClock
from pooled_sessions.codec import Operation, parse_json
from pooled_sessions.config import Settings
from pooled_sessions.tools.migrate import upsert_of
from tests.filekit import (
    EPOCH,
    document,
    journal_of,
    mode_of,
    record,
    stored,
    temp_files,
    write_document,
)
from tests.storekit import make_record, session_id
from tests.waiting import wait_until


def file_store(path: Path) -> JsonFileStore:
    return JsonFileStore(StoreURL.parse(str(path)), Settings())


def storekit_upserts(first: int, count: int) -> list[Operation]:
    now = time.time()
    return [upsert_of(session_id(n), make_record(n, now)) for n in range(first, first + count)]


def test_document_format_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(path) as svc:
        ended = svc.create_session("bob")  # the first write of a new store makes its snapshot
        sid = svc.create_session("alice", {"cart": [3, 7]}, {"ip": "203.0.113.7"})
        svc.end_session(ended)  # later ones append to the journal, a line each
    body = json.loads(path.read_bytes())
    assert (body["format"], body["version"], body["generation"]) == ("pooled_sessions", 2, 1)
    assert ended in body["sessions"], "the end is not in the snapshot ..."
    assert sid not in body["sessions"]
    found = stored(path)
    assert found.lines == 2, "... but in the journal, after alice's line"
    record = found.sessions[sid]
    assert record["username"] == "alice" and record["attributes"] == {"cart": [3, 7]}
    assert record["ip"] == "203.0.113.7"
    assert ended not in found.sessions and ended in found.tombstones
    for name in (path, Path(f"{path}.lock"), journal_of(path)):
        assert mode_of(name) == 0o600
    assert temp_files(tmp_path) == []


def test_a_flush_appends_to_the_journal_and_leaves_the_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(path) as svc:
        svc.create_session("alice")
        svc.force_save()
        snapshot, inode = path.read_bytes(), os.stat(path).st_ino
        sizes = [journal_of(path).stat().st_size]
        for n in range(3):
            svc.create_session(f"user{n}")
            svc.force_save()
            sizes.append(journal_of(path).stat().st_size)
        assert sizes == sorted(set(sizes)), "each flush appended"
        assert path.read_bytes() == snapshot and os.stat(path).st_ino == inode
    assert stored(path).lines == 3 and len(stored(path).sessions) == 4


def test_compaction_replaces_the_snapshot_and_a_reader_of_the_old_one_sees_it_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.json"
    store = file_store(path)
    store.write(storekit_upserts(0, 3), time.time())
    held = open(path, "rb")  # noqa: SIM115 - a reader holding the old version open
    before, old_bytes = os.fstat(held.fileno()).st_ino, held.read()
    old_journal = journal_of(path).stat().st_ino
    store.write(storekit_upserts(3, 3), time.time())
    assert store.compact(), "a journal line to fold"
    assert not store.compact(), "nothing left to fold"
    assert os.stat(path).st_ino != before, "a new inode: the old file was never rewritten"
    assert journal_of(path).stat().st_ino != old_journal, "and a new journal"
    held.seek(0)
    assert held.read() == old_bytes, "a reader of the old version sees it whole"
    held.close()
    body = json.loads(path.read_bytes())
    assert body["generation"] == 2 and len(body["sessions"]) == 6
    assert stored(path).lines == 0 and temp_files(tmp_path) == []


def test_file_url_and_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with SessionService("relative.json") as svc:
        sid = svc.create_session("alice")
    with SessionService(f"file://{tmp_path}/relative.json") as svc:
        assert svc.get_session(sid) is not None


def test_readers_never_see_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror, "JOURNAL_MIN_BYTES", 8192)  # compact every few flushes
    path = tmp_path / "sessions.json"
    stop = threading.Event()
    snapshots: set[int] = set()
    lines: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                data = path.read_bytes()
                journal = stored(path)
            except FileNotFoundError:
                continue
            except (ValueError, KeyError) as exc:
                problems.append(repr(exc))
                continue
            try:
                json.loads(data)
                snapshots.add(len(data))
                lines.append(journal.lines)
            except ValueError as exc:
                problems.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with SessionService(path) as svc:
            for n in range(60):
                svc.create_session(f"user{n}", {"pad": "x" * 2000})
                svc.force_save()
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert len(snapshots) > 5, "compactions replaced the snapshot"
    assert max(lines, default=0) >= 2, "between them, whole journal lines were read"
    assert len(stored(path).sessions) == 60


def test_stray_temp_files_are_removed_and_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    strays = [tmp_path / ".sessions.json.k3j2l1.tmp", tmp_path / ".sessions.json.zz.tmp"]
    unrelated = [tmp_path / ".other.json.k3j2l1.tmp", tmp_path / "sessions.json.bak"]
    for file in strays + unrelated:
        file.write_bytes(b"half a docu")
    with SessionService(path) as svc:
        assert not any(file.exists() for file in strays)
        assert all(file.exists() for file in unrelated)
        svc.create_session("alice")
    assert temp_files(tmp_path) == [".other.json.k3j2l1.tmp"]


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(StoreUnavailableError, match=str(missing)):
        SessionService(missing / "sessions.json")
    assert not missing.exists()


def test_a_directory_in_place_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "sessions.json").mkdir()
    with pytest.raises(StoreUnavailableError, match="is a directory"):
        SessionService(tmp_path / "sessions.json")


def test_tombstones_and_expired_sessions_are_purged_by_cleanup(
    tmp_path: Path, clock: FastForwardClock
) -> None:
    path = tmp_path / "sessions.json"
    write_document(
        path,
        document(
            sessions={"s-old": {**record(), "expires_at": EPOCH}, "s-live": record()},
            tombstones={"s-ancient": EPOCH, "s-recent": time.time()},
        ),
    )

    def purged() -> bool:
        found = stored(path)
        return "s-old" not in found.sessions and "s-ancient" not in found.tombstones

    with SessionService(path, tombstone_ttl_seconds=3600, clock=clock) as svc:
        clock.advance(svc.settings.cleanup_interval_minutes * 60)
        assert wait_until(purged)
    found = stored(path)
    assert set(found.sessions) == {"s-live"}
    assert set(found.tombstones) == {"s-recent"}


# -- corrupt files are refused and left byte for byte ------------------------------------------


def _corrupt_bodies() -> list[tuple[str, bytes]]:
    good = document()
    cases: list[tuple[str, Any]] = [
        ("list", [good]),
        ("no format", {k: v for k, v in good.items() if k != "format"}),
        ("other format", {**good, "format": "flask_session"}),
        ("newer version", {**good, "version": 3}),
        ("version 2 without a generation", {**good, "version": 2}),
        ("bad generation", {**good, "version": 2, "generation": "7"}),
        ("sessions a list", {**good, "sessions": []}),
        ("no tombstones", {k: v for k, v in good.items() if k != "tombstones"}),
        ("record missing a key", document({"s-one": {"username": "alice"}})),
        ("record extra key", document({"s-one": {**record(), "admin": True}})),
        ("bool time", document({"s-one": {**record(), "created_at": True}})),
        ("string time", document({"s-one": {**record(), "expires_at": "tomorrow"}})),
        ("bad username", document({"s-one": {**record(), "username": 7}})),
        ("attributes a list", document({"s-one": {**record(), "attributes": [1]}})),
        ("bad session id", document({"has space": record()})),
        ("bad tombstone", document(tombstones={"s-x": "yesterday"})),  # type: ignore[dict-item]
    ]
    raw = [(name, (json.dumps(body) + "\n").encode()) for name, body in cases]
    text = json.dumps(good) + "\n"
    return raw + [
        ("empty", b""),
        ("not json", b"sessions: yes\n"),
        ("not utf-8", b'{"format": "\xff\xfe"}'),
        ("NaN time", text.replace("4000000000.0", "NaN", 1).encode()),
        ("Infinity time", text.replace("4000000000.0", "Infinity", 1).encode()),
        ("overflowing time", text.replace("4000000000.0", "1e999", 1).encode()),
        ("overflowing attribute", text.replace("[1, 2]", "[1e999, 2]", 1).encode()),
        ("NaN attribute", text.replace("[1, 2]", "[NaN, 2]", 1).encode()),
        ("huge integer", text.replace("[1, 2]", "[" + "9" * 5000 + ", 2]", 1).encode()),
        ("deep nesting", text.replace("[1, 2]", "[" * 100_000 + "]" * 100_000, 1).encode()),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": [1, 2.5, "\xc3\xa9"]}',
        b'\xef\xbb\xbf{"bom": true}',
        '{"wide": "\u00e9"}'.encode("utf-16"),
        '{"str": null}',
    ],
)
def test_parse_json_reads_what_json_loads_reads(data: bytes | str) -> None:
    assert parse_json(data) == json.loads(data)


def test_parse_json_refuses_what_this_library_never_writes() -> None:
    for text in ('{"t": NaN}', '{"t": -Infinity}', '{"t": 1e999}'):
        with pytest.raises(ValueError):
            parse_json(text.encode())
    with pytest.raises(ValueError, match="BOM"):
        parse_json('\ufeff{"a": 1}')


@pytest.mark.parametrize(("name", "data"), _corrupt_bodies(), ids=lambda v: str(v)[:24])
def test_corrupt_files_are_refused_and_kept(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(data)
    with pytest.raises(CorruptStoreError, match=str(path)):
        SessionService(path)
    assert path.read_bytes() == data
    assert temp_files(tmp_path) == []


def test_truncated_files_are_refused_at_every_length(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(path, write_behind=True) as svc:  # one write: all three in the snapshot
        for n in range(3):
            svc.create_session(f"user{n}", {"n": n})
    whole = path.read_bytes()
    refused = 0
    for length in range(0, len(whole) - 1, 7):
        path.write_bytes(whole[:length])
        with pytest.raises(CorruptStoreError):
            SessionService(path)
        assert path.read_bytes() == whole[:length]
        refused += 1
    assert refused > 50


def test_a_file_corrupted_while_running_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(
        path, write_behind=True, save_delay_seconds=3600, retry_initial_seconds=60
    ) as svc:
        kept = svc.create_session("alice")
        svc.force_save()
        garbage = b'{"format": "pooled_sessions", "version": 1, "sessions": {'
        path.write_bytes(garbage)
        late = svc.create_session("bob", {"pending": True})
        with pytest.raises(CorruptStoreError, match="left as it is"):
            svc.force_save()
        assert path.read_bytes() == garbage
        assert svc.stats()["pending_sessions"] == 1
        path.unlink()  # the operator moves the damaged file aside
        svc.force_save()
    with SessionService(path) as svc:
        session = svc.get_session(late)
        assert session is not None and session.attributes == {"pending": True}
        assert svc.get_session(kept) is None, "it lived only in the file that was removed"


def test_a_change_to_a_file_corrupted_while_running_is_refused_at_the_call(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(path) as svc:
        kept = svc.create_session("alice", {"n": 1})
        garbage = b'{"format": "pooled_sessions", "version": 1, "sessions": {'
        path.write_bytes(garbage)
        with pytest.raises(CorruptStoreError, match="left as it is"):
            svc.create_session("bob", {"pending": True})
        with pytest.raises(CorruptStoreError, match="left as it is"):
            svc.update_session(kept, {"n": 2})
        assert path.read_bytes() == garbage
        stats = svc.stats()
        assert stats["pending_sessions"] == 0, "nothing kept to be written later"
        assert stats["live_sessions"] == 1, "only the session changed, held as it was"
        path.unlink()  # the operator moves the damaged file aside
        assert svc.get_session(kept) is None, "it lived only in the file that was removed"
        assert svc.create_session("carol")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.floats(0, 1, exclude_max=True),
            st.integers(0, 255),
            st.sampled_from(["flip", "insert", "delete"]),
        ),
        min_size=1,
        max_size=4,
    )
)
@example(edits=[(0.999, 0, "delete")])  # only the final newline goes: still a good file
def test_fuzzed_files_are_refused_or_read_never_changed(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[float, int, str]]
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    path = directory / "sessions.json"
    data = bytearray((json.dumps(document()) + "\n").encode())
    for where, value, how in edits:
        at = int(where * len(data))
        if how == "flip":
            data[at] = value
        elif how == "insert":
            data.insert(at, value)
        elif len(data) > 1:
            del data[at]
    path.write_bytes(bytes(data))
    try:
        svc = SessionService(path)
    except CorruptStoreError:
        pass
    else:
        with svc:  # it parsed: every session in it must be usable
            body = json.loads(bytes(data))
            for sid, stored in body["sessions"].items():
                svc.get_session(sid)
                svc.sessions_of(stored["username"]) if stored["username"] else None
    assert path.read_bytes() == bytes(data)
    assert temp_files(directory) == []


@pytest.mark.parametrize("changed", [3, 2000])
def test_the_document_always_matches_the_records(changed: int) -> None:
    """The document, built from the encoded texts each record holds, reads back as the
    records the table hands out, after few or many changes."""
    from pooled_sessions.adapters.record_table import RecordTable
    from pooled_sessions.codec import Delete, Upsert, decode_document, encode_attributes

    def upsert(n: int, value: int) -> Upsert:
        attributes = encode_attributes({"v": value})
        return Upsert(
            session_id=f"s{n}",
            username="alice",
            attributes=attributes,
            changed=frozenset({"v"}),
            removed=frozenset(),
            ip=None,
            user_agent=None,
            created_at=EPOCH,
            last_accessed_at=EPOCH,
            expires_at=4e9,
            absolute_expires_at=None,
            created=True,
        )

    table = RecordTable()
    table.apply([upsert(n, 0) for n in range(2500)])
    table.document()
    table.apply([upsert(n, 1) for n in range(0, changed)])
    table.apply([Delete("s2400", "alice", EPOCH)])
    sessions, tombstones = decode_document(table.document().encode(), "table")
    assert sessions == dict(table.scan()) and tombstones == {"s2400": EPOCH}
    assert [sessions[f"s{n}"]["attributes"]["v"] for n in (0, 2, 2499)] == [1, 1, 0]
    reread = RecordTable(*decode_document(table.document().encode(), "table"))
    assert decode_document(reread.document().encode(), "again")[0] == sessions


def test_a_record_read_from_the_file_is_encoded_only_once_it_changes(tmp_path: Path) -> None:
    """A reopened store holds each record as parsed; a change to one encodes it, merges
    only the changed key, and the journal and a new snapshot read back the same."""
    from pooled_sessions.adapters.held import Held, Loaded
    from pooled_sessions.testing.records import assert_same_record, upsert

    path = tmp_path / "sessions.json"
    now = time.time()
    records = {
        session_id(n): make_record(n, now, attributes={"n": n, "s": "\u2603"}) for n in (1, 2)
    }
    first = file_store(path)
    first.write([upsert(sid, record) for sid, record in records.items()], now)
    first.compact()
    first.close()
    store = file_store(path)
    assert store.count() == 2
    table = store._mirror.table
    assert all(type(held) is Loaded for held in table.records.values())
    changed, kept = session_id(1), session_id(2)
    record = make_record(1, now, attributes={"n": 10, "s": "changed but not sent"})
    store.write([upsert(changed, record, created=False, changed={"n"})], now)
    assert type(table.records[changed]) is Held and type(table.records[kept]) is Loaded
    expected = make_record(1, now, attributes={"n": 10, "s": "\u2603"})
    for reader in (file_store(path), store):
        assert_same_record(reader.load(changed), expected, "after the change")
        assert_same_record(reader.load(kept), records[kept], "the other record")
    store.compact()
    reopened = file_store(path)
    assert_same_record(reopened.load(changed), expected, "from the new snapshot")
    assert_same_record(reopened.load(kept), records[kept], "kept from the new snapshot")


def test_a_poll_names_the_sessions_another_process_changed(tmp_path: Path) -> None:
    """New journal lines name what they changed (written, ended, purged), so another
    process drops only those from its cache; a new snapshot says True (anything may have
    changed)."""
    from pooled_sessions.testing.records import delete, upsert

    path, now = tmp_path / "sessions.json", time.time()
    reader, writer = file_store(path), file_store(path)
    records = {session_id(n): make_record(n, now) for n in range(4)}
    a, b, *rest = records
    writer.write([upsert(a, records[a])], now)
    assert reader.poll() is True, "the first write makes the snapshot"
    writer.write([upsert(sid, records[sid]) for sid in rest], now)
    assert reader.poll() == frozenset(rest)
    writer.write([upsert(b, records[b])], now)
    assert reader.poll() == frozenset({b})
    writer.write([upsert(a, records[a], created=False, changed=())], now)
    writer.write([delete(b, records[b], now)], now)
    assert reader.poll() == frozenset({a, b})
    assert reader.poll() is False
    writer.compact()
    assert reader.poll() is True
    assert reader.poll() is False


def test_every_new_snapshot_is_noticed_by_a_process_holding_an_older_one(tmp_path: Path) -> None:
    """File systems hand freed inodes out again, and mtime can be coarse: two versions of
    the snapshot may stat alike. A process holds the version it read open, so no newer one
    can take its inode, and one stat tells them apart."""
    path = tmp_path / "sessions.json"
    left, right = file_store(path), file_store(path)
    right.write(storekit_upserts(0, 1), time.time())  # the first write makes the snapshot
    assert left.poll() and not left.poll()
    for n in range(1, 21):
        right.write(storekit_upserts(n, 1), time.time())
        assert right.compact()
        assert left.poll(), f"compaction {n} was noticed"
        assert left.count() == n + 1
