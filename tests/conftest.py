"""Shared fixtures: a clean environment for every test, store URLs to run suites on, and a
clock that tests move forward."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pooled_sessions.clock import FastForwardClock

pytest_plugins = [
    "pytester",
    "tests.backends",
    "tests.redis_servers",
    "tests.aio_backends",
    "tests.webkit",
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No POOLED_SESSIONS_* variable of the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("POOLED_SESSIONS_"):
            monkeypatch.delenv(key)
    yield


@pytest.fixture
def clock() -> FastForwardClock:
    """Real time that the test moves forward with ``clock.advance(seconds)``: give it to a
    service (``clock=clock``) and a wait it skips costs nothing."""
    return FastForwardClock()
