"""Shared fixtures: a clean environment for every test, and store URLs to run suites on."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "pytester",
    "tests.backends",
    "tests.redis_servers",
    "tests.aio_backends",
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No POOLED_SESSIONS_* variable of the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("POOLED_SESSIONS_"):
            monkeypatch.delenv(key)
    yield
