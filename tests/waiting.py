"""Bounded polling for what another thread or process does: no fixed sleeps in tests."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.005


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(POLL_SECONDS)
    return True
