"""The journal beside the snapshot: one append per batch, readers that apply only new
lines, compaction past the bound, torn and damaged lines, superseded and orphaned journals.
Real files; another process where one is needed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import CorruptStoreError, SessionService
from pooled_sessions.adapters.file import fsio, journal, mirror
from pooled_sessions.adapters.file.store import JsonFileStore
from pooled_sessions.adapters.file.store_async import AioFileStore
from pooled_sessions.adapters.file.stream import StoreStream
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Delete
from pooled_sessions.config import Settings
from tests.filekit import document, journal_of, record, stored, temp_files, write_document
from tests.procworkers import upsert

ROOT = Path(__file__).resolve().parents[1]


def file_store(path: Path) -> JsonFileStore:
    return JsonFileStore(StoreURL.parse(str(path)), Settings())


def write(store: JsonFileStore, *numbers: int, pad: int = 0) -> None:
    store.write([upsert(n, pad) for n in numbers], time.time())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


class Calls:
    """Counts calls of some functions of a module, passing them on; with ``under``, only
    calls on files there (a flusher another test left running in this process is not ours)."""

    def __init__(
        self, patch: pytest.MonkeyPatch, module: Any, *names: str, under: Path | None = None
    ) -> None:
        self.made: dict[str, list[tuple[Any, ...]]] = {name: [] for name in names}
        self.under = None if under is None else str(under)
        for name in names:
            patch.setattr(module, name, self._counting(name, getattr(module, name)))

    def _ours(self, args: tuple[Any, ...]) -> bool:
        if self.under is None:
            return True
        first = args[0] if args else None
        if isinstance(first, int):  # a descriptor: the file it is open on
            try:
                first = os.readlink(f"/proc/self/fd/{first}")
            except OSError:
                return False
        return isinstance(first, str | Path) and str(first).startswith(self.under)

    def _counting(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self._ours(args):
                self.made[name].append(args)
            return real(*args, **kwargs)

        return counted

    def __getitem__(self, name: str) -> int:
        return len(self.made[name])


# -- one write, one fdatasync --------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 500])
def test_a_write_is_one_append_and_one_fdatasync(path: Path, batch: int) -> None:
    store = file_store(path)
    write(store, 0)  # a new store's first write makes its snapshot
    end = journal_of(path).stat().st_size
    with pytest.MonkeyPatch.context() as patch:
        calls = Calls(
            patch, os, "write", "fdatasync", "fsync", "replace", "rename", under=path.parent
        )
        write(store, *range(1, 1 + batch))
    assert (calls["write"], calls["fdatasync"]) == (1, 1)
    assert (calls["fsync"], calls["replace"], calls["rename"]) == (0, 0, 0)
    fd, data = calls.made["write"][0]
    assert fsio.stat_or_none(str(journal_of(path))) is not None
    assert len(data) == journal_of(path).stat().st_size - end, "the line went to the journal"
    assert calls.made["fdatasync"][0] == (fd,)
    assert stored(path).lines == 1 and len(stored(path).sessions) == batch + 1


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_the_lock_is_let_go_before_the_fdatasync(path: Path, kind: str) -> None:
    """Another writer appends while a line waits for its disk flush (as another process
    would: a store of its own), and the first write returns only once its line is flushed."""
    first, other = file_store(path), file_store(path)
    write(first, 0)
    flushing, flushed = threading.Event(), threading.Event()
    real = fsio.fdatasync

    def slow_fdatasync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread() and not flushed.is_set():
            flushing.set()
            assert flushed.wait(10)
        real(fd)

    def first_write() -> None:
        if kind == "blocking":
            write(first, 1)
        else:
            store = AioFileStore(StoreURL.parse(f"aiofile://{path}"), Settings())
            asyncio.run(store.write([upsert(1)], time.time()))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fsio, "fdatasync", slow_fdatasync)
        writer = threading.Thread(target=first_write)
        writer.start()
        assert flushing.wait(10), "the first line reached its fdatasync"
        write(other, 2)  # takes the lock file the first writer let go
        assert writer.is_alive(), "the first write waits for its flush"
        flushed.set()
        writer.join(10)
    assert not writer.is_alive()
    assert set(stored(path).sessions) == {upsert(n).session_id for n in range(3)}


async def test_the_asyncio_store_appends_the_same_way(path: Path) -> None:
    store = AioFileStore(StoreURL.parse(f"aiofile://{path}"), Settings())
    await store.write([upsert(0)], time.time())
    with pytest.MonkeyPatch.context() as patch:
        calls = Calls(patch, os, "write", "fdatasync", "fsync", "replace", under=path.parent)
        await store.write([upsert(n) for n in range(1, 50)], time.time())
    assert (calls["write"], calls["fdatasync"], calls["fsync"], calls["replace"]) == (1, 1, 0, 0)
    assert stored(path).lines == 1 and len(stored(path).sessions) == 50


async def test_the_asyncio_store_does_no_file_step_after_an_append(path: Path) -> None:
    """It lets the lock file go with the append (always a commit's last step under it), so
    a step that came after one would run unlocked: it is refused."""
    store = AioFileStore(StoreURL.parse(f"aiofile://{path}"), Settings())
    await store.write([upsert(0)], time.time())
    held = store._mirror

    def steps() -> Any:
        assert held.journal is not None
        yield mirror.Append(held.journal.inode, held.offset, journal.framed("{}"))
        yield mirror.Look()

    with pytest.raises(RuntimeError, match="after the append"):
        await store._run(steps())


def test_ends_and_purges_are_journal_lines(path: Path) -> None:
    store = file_store(path)
    write(store, 0, 1, 2)
    store.write([Delete("s00000001", "user1", time.time())], time.time())
    store.write([dataclasses.replace(upsert(3), expires_at=time.time() - 1)], 0)
    assert store.purge_expired(time.time()) == 1
    lines = journal_of(path).read_bytes().splitlines()[1:]
    changes = [json.loads(line.partition(b" ")[2]) for line in lines]
    assert list(changes[0]) == ["end"] and list(changes[1]) == ["set"]
    assert changes[2] == {"drop": ["s00000003"]}
    found = stored(path)
    assert set(found.sessions) == {"s00000000", "s00000002"}
    assert set(found.tombstones) == {"s00000001"}


# -- readers ---------------------------------------------------------------------------------


def test_a_reader_applies_only_the_new_lines(path: Path) -> None:
    writer = file_store(path)
    write(writer, *range(2000))
    reader = file_store(path)
    with pytest.MonkeyPatch.context() as patch:
        reads = Calls(patch, fsio, "read_pinned", "stat_or_none")
        parses = Calls(patch, mirror, "decode_snapshot")
        assert not reader.poll()
        assert (reads["stat_or_none"], reads["read_pinned"]) == (2, 0), "two stats, no read"
        end = journal_of(path).stat().st_size
        write(writer, 2000)
        assert reader.poll()
        assert reads["read_pinned"] == 1 and parses["decode_snapshot"] == 0
        _, offset = reads.made["read_pinned"][0]
        assert offset == end, "read from where it had applied"
        assert reader.load("s00002000") is not None and reader.count() == 2001
        assert not reader.poll()


def test_once_it_has_looked_a_reader_checks_the_files_it_holds_not_their_paths(
    path: Path,
) -> None:
    writer = file_store(path)
    write(writer, *range(20))
    reader = file_store(path)
    with pytest.MonkeyPatch.context() as patch:
        reads = Calls(patch, fsio, "read_pinned", "stat_or_none")
        assert not reader.poll()  # the first look walks both paths, and vouches for them
        looked = reads["stat_or_none"]
        for _ in range(50):
            assert not reader.poll()
        assert reads["stat_or_none"] == looked, "nothing changed: an fstat of each file held"
        write(writer, 20)  # (the writer looks by path too)
        before = reads["stat_or_none"]
        assert reader.poll() == frozenset({"s00000020"}), "another's append: its lines read"
        assert reads["read_pinned"] == 1
        assert not reader.poll() and not reader.poll()
        assert reads["stat_or_none"] == before + looked, "what it read up to, it vouches for"
        patch.setattr(mirror, "VOUCH_SECONDS", -1.0)  # a look vouches until a moment past
        write(writer, 21)
        assert reader.poll() and not reader.poll()
        looks = reads["stat_or_none"]
        assert not reader.poll() and not reader.poll()
        assert reads["stat_or_none"] == looks + 2 * looked, "a vouch run out: look by path"


def _stays_current(path: Path, change: Callable[[Path], None], *, reread: bool) -> None:
    """A reader that vouched for the files, after ``change`` made by hand: it notices (and,
    with ``reread``, reads the files again) and serves what they hold."""
    writer = file_store(path)
    write(writer, *range(5))
    reader = file_store(path)
    assert not reader.poll() and not reader.poll()  # vouched for: the fstat path
    time.sleep(0.02)  # past the file system's clock tick, as anything done by hand is
    change(path)
    with pytest.MonkeyPatch.context() as patch:
        parses = Calls(patch, mirror, "decode_snapshot")
        looks = Calls(patch, fsio, "stat_or_none")
        reader.poll()
        assert looks["stat_or_none"] >= 2, "it looked by path"
        assert parses["decode_snapshot"] == (1 if reread else 0)
    assert reader.count() == 5 and reader.load("s00000004") is not None
    write(writer, 5)
    assert reader.poll() and reader.load("s00000005") is not None


def test_a_reader_notices_a_journal_linked_elsewhere(path: Path) -> None:
    _stays_current(path, lambda p: os.link(journal_of(p), p.with_name("copy")), reread=False)


def test_a_reader_notices_a_journal_moved_away_and_copied_back(path: Path) -> None:
    def swap(p: Path) -> None:
        data = journal_of(p).read_bytes()
        journal_of(p).rename(p.with_name("aside"))
        journal_of(p).write_bytes(data)

    _stays_current(path, swap, reread=True)


def test_a_reader_notices_a_snapshot_touched_in_place(path: Path) -> None:
    _stays_current(path, lambda p: os.utime(p), reread=True)


def test_a_reader_notices_a_snapshot_replaced_by_a_copy(path: Path) -> None:
    def replace(p: Path) -> None:
        copy = p.with_name("copy")
        copy.write_bytes(p.read_bytes())
        os.replace(copy, p)

    _stays_current(path, replace, reread=True)


def test_a_new_generation_written_by_another_process_is_read_whole(path: Path) -> None:
    store = file_store(path)
    write(store, 0, 1)
    generation = json.loads(path.read_bytes())["generation"]
    done = subprocess.run(
        [sys.executable, "-m", "tests.procworkers", "compactor", str(path), "2", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(done.stdout) == generation + 1
    with pytest.MonkeyPatch.context() as patch:
        parses = Calls(patch, mirror, "decode_snapshot")
        assert store.poll() and parses["decode_snapshot"] == 1
    assert store.count() == 7 and store.load("s00000006") is not None
    write(store, 7)  # and it appends to the new journal
    found = stored(path)
    assert (found.generation, found.lines, len(found.sessions)) == (generation + 1, 1, 8)


# -- compaction ------------------------------------------------------------------------------


@pytest.mark.parametrize(("least", "share"), [(16384, 0.0), (1024, 0.5)])
def test_the_journal_is_folded_past_its_bound(
    path: Path, monkeypatch: pytest.MonkeyPatch, least: int, share: float
) -> None:
    monkeypatch.setattr(mirror, "JOURNAL_MIN_BYTES", least)
    monkeypatch.setattr(mirror, "JOURNAL_SHARE", share)
    store = file_store(path)
    generations = set()
    for n in range(120):
        write(store, n, pad=500)
        bound = max(least, int(path.stat().st_size * share))
        assert journal_of(path).stat().st_size <= bound
        generations.add(json.loads(path.read_bytes())["generation"])
    assert len(generations) >= 4, "compacted several times"
    found = stored(path)
    assert len(found.sessions) == 120 and found.generation == max(generations)
    assert file_store(path).count() == 120


# -- crashes and damage ----------------------------------------------------------------------


def test_a_torn_last_line_is_ignored_then_cut_by_the_next_writer(path: Path) -> None:
    store = file_store(path)
    write(store, 0)
    write(store, 1)
    whole = journal_of(path).read_bytes()
    line = journal.change_line(['"s9":' + json.dumps(record())])
    assert line is not None
    with open(journal_of(path), "ab") as file:
        file.write(line[: len(line) // 2])  # a writer killed mid-append
    torn = journal_of(path).read_bytes()
    reader = file_store(path)
    assert reader.count() == 2 and reader.load("s9") is None
    assert journal_of(path).read_bytes() == torn, "a reader never changes the file"
    write(reader, 2)
    found = stored(path)
    assert journal_of(path).read_bytes().startswith(whole) and found.torn == 0
    assert found.lines == 2 and set(found.sessions) == {"s00000000", "s00000001", "s00000002"}


def _framed(text: str) -> bytes:
    return b"%08x %s\n" % (zlib.crc32(text.encode()), text.encode())


def _flip(line_number: int) -> Callable[[bytes], bytes]:
    def flip(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[line_number] = lines[line_number][:-3] + b"###"
        return b"\n".join(lines)

    return flip


DAMAGED: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("empty", lambda data: b"", "not a sessions journal"),
    ("foreign", lambda data: b"hello\n" + data, "not a sessions journal"),
    (
        "header version",
        lambda data: _framed('{"format":"pooled_sessions.journal","version":2}'),
        "journal version 2",
    ),
    ("damaged line before whole ones", _flip(1), "damaged and whole lines follow"),
    ("whole line, bad JSON", lambda data: data + _framed('{"set":'), "not valid JSON"),
    (
        "whole line, bad record",
        lambda data: data + _framed('{"set":{"a b":{}}}'),
        "invalid session id",
    ),
    ("whole line, unknown key", lambda data: data + _framed('{"undo":[]}'), "not a journal change"),
    (
        "newer generation",
        lambda data: journal.header(9) + data.split(b"\n", 1)[1],
        "extends generation 9",
    ),
]


@pytest.mark.parametrize(("name", "damage", "words"), DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_journal_is_refused_and_left_as_it_is(
    path: Path, name: str, damage: Callable[[bytes], bytes], words: str
) -> None:
    store = file_store(path)
    write(store, 0)
    write(store, 1)
    write(store, 2)
    data = damage(journal_of(path).read_bytes())
    swap = path.parent / "swap"
    swap.write_bytes(data)
    swap.replace(journal_of(path))  # a new file: writers never change one but by appending
    snapshot = path.read_bytes()
    with pytest.raises(CorruptStoreError, match=words):
        SessionService(path)
    with pytest.raises(CorruptStoreError, match=words):
        list(StoreStream(str(path)).records())
    with pytest.raises(CorruptStoreError, match=words):
        write(store, 3)
    assert journal_of(path).read_bytes() == data and path.read_bytes() == snapshot
    assert temp_files(path.parent) == []


def test_a_journal_superseded_by_a_newer_snapshot_is_not_applied(path: Path) -> None:
    """A compaction killed between its two renames leaves the new snapshot beside the old
    journal: every line of it is already in the snapshot, and the next write replaces it."""
    store = file_store(path)
    write(store, 0)
    write(store, 1)
    old = journal_of(path).read_bytes()
    store.write([Delete("s00000001", "user1", time.time())], time.time())
    assert store.compact()
    journal_of(path).write_bytes(old)  # the old journal, as if its replacement never came
    reader = file_store(path)
    assert reader.load("s00000001") is None, "the old journal's line is not replayed"
    assert reader.count() == 1
    write(reader, 2)
    head = journal_of(path).read_bytes().split(b"\n", 1)[0]
    assert json.loads(head.partition(b" ")[2])["generation"] == stored(path).generation
    assert set(stored(path).sessions) == {"s00000000", "s00000002"}


def test_a_journal_without_its_snapshot(path: Path) -> None:
    store = file_store(path)
    write(store, 0)
    write(store, 1)
    path.unlink()
    with pytest.raises(CorruptStoreError, match="which is missing"):
        file_store(path)
    journal_of(path).write_bytes(journal.header(1))  # no changes: nothing would be lost
    store = file_store(path)
    assert store.count() == 0
    write(store, 5)
    assert stored(path).generation == 2, "a generation no journal named before"


def test_a_version_1_file_is_read_and_upgraded_by_its_first_write(path: Path) -> None:
    data = write_document(path, document())
    store = file_store(path)
    assert store.count() == 2 and not journal_of(path).exists()
    assert path.read_bytes() == data, "reading changes nothing"
    write(store, 0)
    body = json.loads(path.read_bytes())
    assert (body["version"], body["generation"]) == (2, 1)
    assert set(stored(path).sessions) == {"s-one", "s-two", "s00000000"}
    assert set(stored(path).tombstones) == {"s-gone"}
