"""What a store holds, found in one streamed pass: counts, users, ages, size."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pooled_sessions.codec import encode_record, is_expired
from pooled_sessions.tools.stores import FileSource, Source

TICK_EVERY = 1000
"""Records read between two calls of a survey's ``tick``."""


@dataclass(slots=True, kw_only=True)
class Inventory:
    """Counts from one pass over a source; the detail fields are None when not gathered."""

    url: str
    live: int = 0
    expired: int = 0
    tombstones: int = 0
    users: int | None = None
    anonymous: int | None = None
    """Live sessions with no user (visitors before login)."""
    oldest: float | None = None
    newest: float | None = None
    bytes: int | None = None
    file_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return asdict(self)


def survey(
    source: Source,
    now: float,
    *,
    detail: bool = False,
    tick: Callable[[int], None] | None = None,
) -> Inventory:
    """Read every record once, checking it; ``detail`` adds users, ages and sizes.

    Memory stays flat except for the set of user-name digests that ``detail`` counts.
    ``tick(n)`` is called as records are read, for a progress display.
    """
    found = Inventory(url=source.url)
    users: set[bytes] = set()
    anonymous = size = 0
    oldest, newest = float("inf"), float("-inf")
    seen = 0
    for _sid, record in source.records():
        seen += 1
        if tick is not None and seen % TICK_EVERY == 0:
            tick(TICK_EVERY)
        if is_expired(record, now):
            found.expired += 1
            continue
        found.live += 1
        if detail:
            if record["username"]:
                users.add(hashlib.blake2b(record["username"].encode(), digest_size=8).digest())
            else:
                anonymous += 1
            size += len(encode_record(record).encode())
            oldest = min(oldest, record["created_at"])
            newest = max(newest, record["created_at"])
    if tick is not None and seen % TICK_EVERY:
        tick(seen % TICK_EVERY)
    found.tombstones = len(source.tombstones())
    if detail:
        found.users, found.anonymous, found.bytes = len(users), anonymous, size
        if found.live:
            found.oldest, found.newest = oldest, newest
        if isinstance(source, FileSource):
            found.file_bytes = source.size()
    return found
