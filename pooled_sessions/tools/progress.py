"""Progress of a long pass: a tqdm bar on a terminal, plain lines in a pipe or a log."""

from __future__ import annotations

import time
from typing import Any, Protocol, TextIO

LINE_EVERY_SECONDS = 5.0


class Progress(Protocol):
    """Told when a pass starts, as it advances, and when it ends."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...

    def finish(self) -> None: ...


class Silent:
    """No output."""

    def start(self, label: str, total: int | None) -> None:
        """Nothing to show."""

    def advance(self, count: int) -> None:
        """Nothing to show."""

    def finish(self) -> None:
        """Nothing to show."""


class Lines:
    """A line every few seconds and at each tenth of the total, then one at the end."""

    def __init__(self, stream: TextIO, every: float | None = None) -> None:
        self._stream = stream
        self._every = LINE_EVERY_SECONDS if every is None else every
        self._label = ""
        self._total: int | None = None
        self._done = 0
        self._started = self._last = 0.0
        self._next_tenth = 1

    def start(self, label: str, total: int | None) -> None:
        self._label, self._total, self._done, self._next_tenth = label, total, 0, 1
        self._started = self._last = time.monotonic()

    def advance(self, count: int) -> None:
        self._done += count
        now = time.monotonic()
        tenth_passed = bool(self._total) and self._done * 10 >= self._next_tenth * (
            self._total or 1
        )
        if tenth_passed or now - self._last >= self._every:
            if self._total:
                self._next_tenth = self._done * 10 // self._total + 1
            self._last = now
            self._say(now)

    def finish(self) -> None:
        seconds = time.monotonic() - self._started
        print(
            f"{self._label}: {self._done:,} sessions in {seconds:.1f} s",
            file=self._stream,
            flush=True,
        )

    def _say(self, now: float) -> None:
        share = f" of {self._total:,} ({self._done / self._total:.0%})" if self._total else ""
        rate = self._done / max(now - self._started, 1e-9)
        print(
            f"{self._label}: {self._done:,}{share} sessions, {rate:,.0f}/s",
            file=self._stream,
            flush=True,
        )


class Bar:
    """A tqdm progress bar."""

    def __init__(self, stream: TextIO, tqdm: Any) -> None:
        self._stream = stream
        self._tqdm = tqdm
        self._bar: Any = None

    def start(self, label: str, total: int | None) -> None:
        self._bar = self._tqdm(
            total=total,
            desc=label,
            unit=" sessions",
            file=self._stream,
            leave=True,
            dynamic_ncols=True,
        )

    def advance(self, count: int) -> None:
        self._bar.update(count)

    def finish(self) -> None:
        self._bar.close()


def for_stream(stream: TextIO, *, quiet: bool = False) -> Progress:
    """A bar when ``stream`` is a terminal and tqdm is installed, plain lines otherwise."""
    if quiet:
        return Silent()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        try:
            from tqdm import tqdm  # type: ignore[import-untyped]
        except ImportError:
            return Lines(stream)
        return Bar(stream, tqdm)
    return Lines(stream)
