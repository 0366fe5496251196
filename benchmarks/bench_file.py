"""The JSON file store's journal: what one committed change and a reopen cost as the store grows.

1. One committed change, `JsonFileStore.write` of one `Upsert`, into stores of 2,000 and
   200,000 sessions, beside a bare ``os.write`` + ``os.fdatasync`` append of the same
   bytes to a file in the same directory: the three are timed in turn, round after round,
   so that they share the disk's weather (median and 90th percentile).
2. Compaction at 200,000 sessions: one fold of the journal into a new snapshot, and what
   it adds to each change when spread over the changes that fill the journal to its bound.
3. Reopening a 200,000-session store (the snapshot, then with a journal near its bound)
   beside a bare ``json.loads`` of the same bytes (median of 3).

Prints Markdown tables and checks the targets: a change at 200,000 sessions at most 3x
its cost at 2,000 and at most 2x the bare append; a reopen at most 3x the bare parse.
Run: ``.venv/bin/python benchmarks/bench_file.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_backends import upserts  # noqa: E402
from benchmarks.compare_render import machine, machine_line  # noqa: E402
from pooled_sessions.adapters.file import journal, mirror  # noqa: E402
from pooled_sessions.adapters.file.store import JsonFileStore  # noqa: E402
from pooled_sessions.adapters.url import StoreURL  # noqa: E402
from pooled_sessions.config import Settings  # noqa: E402

SMALL, LARGE = 2_000, 200_000
ROUNDS = 300
REOPENS = 3
TARGET_GROWTH, TARGET_BARE, TARGET_REOPEN = 3.0, 2.0, 3.0


def open_store(path: Path) -> JsonFileStore:
    return JsonFileStore(StoreURL.parse(str(path)), Settings())


def filled(path: Path, size: int) -> JsonFileStore:
    """A store of ``size`` sessions, compacted (an empty journal)."""
    store = open_store(path)
    now = time.time()
    for start in range(0, size, 20_000):
        store.write(upserts(start, min(20_000, size - start), now), now)
    store.compact()
    return store


def line_bytes(store: JsonFileStore, n: int) -> int:
    """The size of the journal line one change of session ``n`` appends."""
    before = os.path.getsize(journal.path_of(store.path))
    store.write(upserts(n, 1, time.time(), created=False), time.time())
    return os.path.getsize(journal.path_of(store.path)) - before


def changes(scratch: Path, rounds: int, large: int) -> dict[str, list[float]]:
    """Seconds of one committed change per round: each store, and the bare append."""
    stores = {size: filled(scratch / f"s{size}.json", size) for size in (SMALL, large)}
    length = line_bytes(stores[large], 0)
    bare = os.open(scratch / "bare.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = b"x" * (length - 1) + b"\n"
    timings: dict[str, list[float]] = {f"{SMALL:,}": [], f"{large:,}": [], "bare": []}

    def one_change(store: JsonFileStore, n: int) -> None:
        store.write(upserts(n % SMALL, 1, time.time(), created=False), time.time())

    def bare_append() -> None:
        os.write(bare, data)
        os.fdatasync(bare)

    try:
        for n in range(rounds):
            timings[f"{SMALL:,}"].append(_timed(lambda: one_change(stores[SMALL], n)))  # noqa: B023
            timings[f"{large:,}"].append(_timed(lambda: one_change(stores[large], n)))  # noqa: B023
            timings["bare"].append(_timed(bare_append))
    finally:
        os.close(bare)
    timings["line bytes"] = [float(length)]
    return timings


def _timed(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def compaction(scratch: Path, large: int, line: int) -> dict[str, float]:
    """One compaction at ``large`` sessions, and its share of each change."""
    store = open_store(scratch / f"s{large}.json")
    snapshot = os.path.getsize(store.path)
    store.write(upserts(1, 1, time.time(), created=False), time.time())
    seconds = _timed(lambda: _compact(store))
    bound = max(mirror.JOURNAL_MIN_BYTES, int(snapshot * mirror.JOURNAL_SHARE))
    per_fold = bound // line
    return {"seconds": seconds, "snapshot": snapshot, "bound": bound, "changes": per_fold}


def _compact(store: JsonFileStore) -> None:
    store.compact()


def reopens(scratch: Path, large: int) -> dict[str, dict[str, float]]:
    """Reopen the large store beside a bare parse: compacted, then with a journal."""
    path = scratch / f"s{large}.json"
    results = {"snapshot only": _reopen(path)}
    store = open_store(path)
    bound = max(mirror.JOURNAL_MIN_BYTES, int(os.path.getsize(path) * mirror.JOURNAL_SHARE))
    n = 0
    while os.path.getsize(journal.path_of(str(path))) < bound * 0.9:
        store.write(upserts(n % large, 200, time.time(), created=False), time.time())
        n += 200
    results["journal near its bound"] = _reopen(path)
    return results


def _reopen(path: Path) -> dict[str, float]:
    snapshot = path.read_bytes()
    lines = Path(journal.path_of(str(path))).read_bytes().splitlines()
    bodies = [line.partition(b" ")[2] for line in lines]

    def bare() -> None:
        json.loads(snapshot)
        for body in bodies:
            json.loads(body)

    store = statistics.median(_timed(lambda: _opened(path)) for _ in range(REOPENS))
    loads = statistics.median(_timed(bare) for _ in range(REOPENS))
    journal_bytes = sum(len(line) + 1 for line in lines)
    return {"store": store, "loads": loads, "snapshot": len(snapshot), "journal": journal_bytes}


def _opened(path: Path) -> None:
    open_store(path).close()


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def change_table(timings: dict[str, list[float]]) -> list[str]:
    lines = [
        f"### One committed change ({len(timings['bare'])} rounds, a "
        f"{timings['line bytes'][0]:.0f}-byte journal line)",
        "",
        "| case | median | p90 | median / bare append |",
        "| --- | ---: | ---: | ---: |",
    ]
    bare = statistics.median(timings["bare"])
    for key, values in timings.items():
        if key == "line bytes":
            continue
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        name = "bare os.write + os.fdatasync" if key == "bare" else f"write, {key} sessions"
        lines.append(f"| {name} | {_us(median)} | {_us(p90)} | {median / bare:.2f}x |")
    return lines + [""]


def compaction_lines(fold: dict[str, float], large: int) -> list[str]:
    share = fold["seconds"] / max(fold["changes"], 1)
    return [
        f"Compaction of the {large:,}-session store ({fold['snapshot'] / 1e6:.1f} MB snapshot): "
        f"{fold['seconds'] * 1000:,.0f} ms, once per {fold['changes']:,.0f} such changes "
        f"(journal bound {fold['bound'] / 1e6:.1f} MB): {_us(share)} per change.",
        "",
    ]


def reopen_table(results: dict[str, dict[str, float]], large: int) -> list[str]:
    lines = [
        f"### Reopening the {large:,}-session store (median of {REOPENS})",
        "",
        "| files | snapshot | journal | reopen | bare json.loads | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['snapshot'] / 1e6:.1f} MB | {row['journal'] / 1e6:.2f} MB "
            f"| {row['store'] * 1000:,.0f} ms | {row['loads'] * 1000:,.0f} ms "
            f"| {row['store'] / row['loads']:.2f}x |"
        )
    return lines + [""]


def targets(
    timings: dict[str, list[float]], opened: dict[str, dict[str, float]], large_size: int
) -> list[str]:
    small, large, bare = (
        statistics.median(values) for key, values in timings.items() if key != "line bytes"
    )
    reopen = max(row["store"] / row["loads"] for row in opened.values())
    checks = [
        (f"a change at {large_size:,} sessions <= {TARGET_GROWTH:.0f}x one at {SMALL:,}",
         large / small, TARGET_GROWTH),
        (f"a change at {large_size:,} sessions <= {TARGET_BARE:.0f}x a bare append + fdatasync",
         large / bare, TARGET_BARE),
        (f"reopening {large_size:,} sessions <= {TARGET_REOPEN:.0f}x a bare json.loads", reopen,
         TARGET_REOPEN),
    ]  # fmt: skip
    lines = ["### Targets", "", "| target | measured | met |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value:.2f}x | {'yes' if value <= limit else 'NO'} |"
              for name, value, limit in checks]  # fmt: skip
    return lines + [""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    args = parser.parse_args(argv)
    large, rounds = (20_000, 40) if args.quick else (LARGE, ROUNDS)
    with tempfile.TemporaryDirectory(prefix="bench-file-") as directory:
        scratch = Path(directory)
        print("changes:", flush=True)
        timings = changes(scratch, rounds, large)
        print("compaction:", flush=True)
        fold = compaction(scratch, large, int(timings["line bytes"][0]))
        print("reopen:", flush=True)
        opened = reopens(scratch, large)
    lines = [
        "## The file store's journal (`benchmarks/bench_file.py`)",
        "",
        f"Machine: {machine_line(machine(None))}.",
        "",
    ]
    lines += change_table(timings) + compaction_lines(fold, large)
    lines += reopen_table(opened, large) + targets(timings, opened, large)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
