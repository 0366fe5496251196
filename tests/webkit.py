"""A browser of one visitor and the store under a web app, shared by the test-client tests
(tests/test_web_clients.py) and the real servers (tests/test_web_servers.py); a pytest
plugin (listed in tests/conftest.py) for its `web_store` fixture.

A `Send` performs one request with the cookie given (or none) and returns a `Reply`; the
browser keeps the session cookie the way a browser does, from ``Set-Cookie`` alone.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import SessionService
from pooled_sessions.adapters import open_store
from pooled_sessions.config import Settings
from tests.redis_servers import RedisServer, commands_called, unique_prefix

COOKIE = "session"
EXPIRE_MINUTES = 30


@dataclass(frozen=True)
class Reply:
    """What one request got back: status, JSON body (None if not JSON), Set-Cookie values."""

    status: int
    body: Any
    set_cookies: list[str]

    @property
    def cookie(self) -> dict[str, str] | None:
        """The attributes of the session cookie set (lower-case keys, ``value`` included)."""
        for header in self.set_cookies:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            if COOKIE in jar:
                morsel = jar[COOKIE]
                found = {key: str(value) for key, value in morsel.items() if value}
                return {**found, "value": morsel.value, "raw": header}
        return None


Send = Callable[[str, str, str | None], Reply]
"""``send(method, path, cookie)``: one request carrying ``session=cookie`` when given."""


@dataclass
class Browser:
    """One visitor: sends its cookie, keeps what ``Set-Cookie`` says (a Max-Age of 0
    deletes it)."""

    send: Send
    cookie: str | None = None
    pids: set[int] = field(default_factory=set)

    def __call__(self, method: str, path: str) -> Reply:
        reply = self.send(method, path, self.cookie)
        assert reply.status == 200, reply
        set_to = reply.cookie
        if set_to is not None:
            self.cookie = None if set_to.get("max-age") == "0" else set_to["value"]
        if isinstance(reply.body, dict):
            self.pids.add(reply.body["pid"])
        return reply

    def get(self, path: str = "/") -> Reply:
        return self("GET", path)

    def post(self, path: str) -> Reply:
        return self("POST", path)


def http_send(port: int) -> Send:
    """`Send` over a new TCP connection per request (``Connection: close``), so a server's
    workers share the requests."""

    def send(method: str, path: str, cookie: str | None) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Connection": "close", "User-Agent": "webkit/1.0"}
        if cookie is not None:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        try:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            cookies = response.headers.get_all("Set-Cookie") or []
            kind = response.headers.get("Content-Type", "")
            body = json.loads(raw) if kind.startswith("application/json") else raw.decode()
            return Reply(response.status, body, cookies)
        finally:
            connection.close()

    return send


# -- the store under the app ------------------------------------------------------------


@dataclass
class Store:
    """The store an app runs on, seen from outside the app: its URL, a snapshot that changes
    whenever anything is written, and a service of its own (another app server)."""

    url: str
    folder: Path | None = None
    server: RedisServer | None = None

    def snapshot(self) -> object:
        """Changes whenever the store is written (file sizes and times, Redis write calls)."""
        if self.folder is not None:
            return sorted(
                (path.name, path.stat().st_size, path.stat().st_mtime_ns)
                for path in self.folder.iterdir()
            )
        assert self.server is not None
        calls = commands_called(self.server)
        return {name: count for name, count in calls.items() if name in WRITES}

    def peer(self) -> SessionService:
        """A service of another app server on this store."""
        return SessionService(self.url, sync_interval_seconds=0.05)

    def session_count(self) -> int:
        """Live sessions in the store."""
        store = open_store(self.url, Settings.load(backend=self.url))
        try:
            return int(store.count())
        finally:
            store.close()


WRITES = {"evalsha", "eval", "hset", "del", "unlink", "expire", "pexpire", "zadd", "set"}


def file_store(folder: Path) -> Store:
    folder.mkdir(parents=True, exist_ok=True)
    return Store(str(folder / "sessions.json"), folder=folder)


def redis_store(server: RedisServer, prefix: str) -> Store:
    return Store(f"{server.url}?prefix={prefix}", server=server)


def environment(**values: str) -> dict[str, str]:
    """The environment of a server process: this one's, without pooled_sessions settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("POOLED_SESSIONS_")}
    return {**base, **values}


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def web_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """This test's store: a JSON file in its folder, then a prefix on the shared Redis."""
    if request.param == "file":
        return file_store(tmp_path / "store")
    server: RedisServer = request.getfixturevalue("redis_server")
    return redis_store(server, unique_prefix())


def import_error(module: str, missing: str) -> str:
    """What importing ``module`` raises, in a fresh interpreter where ``missing`` cannot be
    imported: ``"<error class> <message>"``."""
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        f"try:\n    import {module}\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()
