"""Render compare.json as a Markdown table and a PNG chart; say which machine produced it.

``.venv/bin/python benchmarks/compare_render.py`` redraws compare.md and compare.png from
benchmarks/results/compare.json without running anything again.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
STORES = ("memory", "file", "aiofile", "redis", "cluster")
MODES = ("write-behind", "write-through")
PACKAGES = ("pooled-sessions", "redis", "hiredis", "aiofiles", "matplotlib")


def machine(redis: Any) -> dict[str, Any]:
    """What produced the numbers: CPU, memory, OS, Python, Redis and package versions."""
    cpu = _first(Path("/proc/cpuinfo"), r"model name\s*:\s*(.+)") or platform.processor()
    memory_kb = _first(Path("/proc/meminfo"), r"MemTotal:\s*(\d+)")
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout
    version = re.search(r"v=(\S+)", server)
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(memory_kb) / 1024 / 1024, 1) if memory_kb else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": version[1] if version else None,
        "packages": packages,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def _first(path: Path, pattern: str) -> str | None:
    try:
        found = re.search(pattern, path.read_text(), re.MULTILINE)
    except OSError:
        return None
    return found[1].strip() if found else None


def machine_line(info: dict[str, Any]) -> str:
    packages = ", ".join(
        f"{name} {version}" for name, version in info["packages"].items() if version
    )
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM; {info['os']}; "
        f"Python {info['python']}; redis-server {info['redis_server']}; {packages}; "
        f"{info['date']}"
    )


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    work = results["workload"]
    lines = [
        "# Store comparison",
        "",
        f"Produced by `make bench-compare` on: {machine_line(results['machine'])}.",
        "",
        f"## Standard workload: {work['users']:,} sessions, {work['requests']:,} requests "
        f"({work['mix']})",
        "",
        "Write-behind: the defaults (`save_delay_seconds=5`, `batch_save_threshold=10`). "
        "Write-through: `batch_save_threshold=1`, `save_delay_seconds=0`.",
        "",
        "| store | mode | requests/s | p50 µs | p99 µs | store writes / request "
        "| sessions written / request |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["workload_results"]:
        lines.append(
            f"| {row['store']} | {row['mode']} | {row['requests_per_second']:,.0f} "
            f"| {row['p50_us']:,.1f} | {row['p99_us']:,.1f} "
            f"| {row['store_writes_per_request']:.4f} | {row['sessions_written_per_request']:.4f} |"
        )
    lines += _flush_table(results["flush_seconds"]) + _memory_table(results)
    lines += _migration_table(results["migration"])
    return "\n".join(lines) + "\n"


def _flush_table(flush: dict[str, dict[str, float]]) -> list[str]:
    sizes = list(next(iter(flush.values())))
    lines = [
        "",
        "## Flush time against store size (one flush of 10 changed sessions), ms",
        "",
        "| store | " + " | ".join(f"{int(s):,} sessions" for s in sizes) + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    for store, row in flush.items():
        lines.append(f"| {store} | " + " | ".join(f"{row[s] * 1000:,.2f}" for s in sizes) + " |")
    return lines


def _memory_table(results: dict[str, Any]) -> list[str]:
    live = results["workload"]["users"]
    lines = [
        "",
        f"## Memory per live session ({live:,} sessions held and flushed)",
        "",
        "| store | bytes in the process | bytes in the store |",
        "| --- | ---: | ---: |",
    ]
    for store, row in results["memory_per_session"].items():
        kept = "(in the process)" if store == "memory" else f"{row['store_bytes']:,.0f}"
        lines.append(f"| {store} | {row['process_bytes']:,.0f} | {kept} |")
    return lines


def _migration_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Migration (`pooled-sessions migrate`, batches of 2,000)",
        "",
        "| run | sessions | copy rate, sessions/s | whole command, s | peak RSS, MB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, run in runs.items():
        lines.append(
            f"| {label} | {run['sessions']:,} | {run.get('sessions_per_second', 0):,} "
            f"| {run['wall_seconds']:.1f} | {run['peak_rss_mb'] or 0:,.0f} |"
        )
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    """Four panels: requests/s, p99 latency, store writes per request, flush time vs size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    rows = {(r["store"], r["mode"]): r for r in results["workload_results"]}
    stores = [s for s in STORES if any(k[0] == s for k in rows)]
    panels = [
        ("requests_per_second", "requests per second", axes[0][0]),
        ("p99_us", "p99 latency, µs", axes[0][1]),
        ("store_writes_per_request", "store writes per request", axes[1][0]),
    ]
    for key, title, ax in panels:
        for offset, mode in enumerate(MODES):
            values = [rows[(s, mode)][key] if (s, mode) in rows else 0 for s in stores]
            positions = [i + (offset - 0.5) * 0.38 for i in range(len(stores))]
            ax.bar(positions, values, width=0.38, label=mode)
        ax.set_xticks(range(len(stores)), stores)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=8)
    flush_ax = axes[1][1]
    for store, row in results["flush_seconds"].items():
        sizes = [int(s) for s in row]
        flush_ax.plot(sizes, [v * 1000 for v in row.values()], marker="o", label=store)
    flush_ax.set(
        xscale="log",
        yscale="log",
        xlabel="sessions in the store",
        title="one flush of 10 changed sessions, ms",
    )
    flush_ax.legend(fontsize=8)
    line = machine_line(results["machine"])
    cut = line.find("; ", len(line) // 2)
    figure.suptitle(f"pooled_sessions stores — {line[:cut]};\n{line[cut + 2 :]}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    import json

    results = json.loads((RESULTS / "compare.json").read_text())
    (RESULTS / "compare.md").write_text(markdown(results))
    chart(results, RESULTS / "compare.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
