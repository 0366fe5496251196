"""The example Django shop under ``gunicorn -w 2``, on the JSON file and on Redis, driven over
HTTP with one connection per request, so requests land on both workers.

A visit stores nothing; a cart filled before login survives Django's login, which rotates
the id; reads and cart changes spread over both workers lose nothing; a second login
rotates again; a logout is honoured by every worker; a forged cookie is never adopted.
Every answer is the one expected and the server logs no error.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.redis_servers import RedisServer, free_port, unique_prefix
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django_app"
PASSWORD = "correct horse"
FORGED = "forged0123456789abcdefghijklmnopqrstuvwxyzABC"
CART_CHANGES = 16
START_SECONDS = 15.0
USERS = f"""
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth.models import User
call_command("migrate", verbosity=0)
for name in ("alice", "bob"):
    User.objects.create_user(name, password={PASSWORD!r})
"""


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop's SQLite database, migrated, with alice and bob."""
    path = tmp_path_factory.mktemp("shop") / "db.sqlite3"
    subprocess.run(
        [sys.executable, "-c", USERS], cwd=EXAMPLE, env=_env(path, ""), check=True, timeout=60
    )
    return path


def _env(database: Path, sessions: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "SHOP_DB": str(database),
        "SHOP_SESSIONS": sessions,
        "PYTHONPATH": str(EXAMPLE),
    }


@dataclass
class Answer:
    """One HTTP answer: its JSON body and what it did to the session cookie."""

    status: int
    body: dict[str, Any]
    cookie: str | None  # the id it sets, "" when it deletes the cookie, None if untouched
    header: str


@dataclass
class Browser:
    """A client keeping the session cookie, opening a new connection for every request."""

    port: int
    cookie: str | None = None
    pids: set[int] = field(default_factory=set)
    sent: int = 0

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Answer:
        """Every other request is sent while a silent connection holds one worker (the first
        to accept), so the other serves it: requests alternate even when the kernel keeps
        waking the same worker."""
        self.sent += 1
        if self.sent % 2:
            return self._request(method, path, form)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10):
            return self._request(method, path, form)

    def _request(self, method: str, path: str, form: dict[str, str] | None) -> Answer:
        headers = {"Connection": "close"}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookie:
            headers["Cookie"] = f"sessionid={self.cookie}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            body = None if form is None else urlencode(form)
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            raw = response.read()
            header = next(
                (h for h in response.headers.get_all("Set-Cookie") or [] if "sessionid=" in h), ""
            )
        finally:
            connection.close()
        answer: dict[str, Any] = (
            json.loads(raw) if response.status < 500 else {"error": raw.decode()[:200]}
        )
        cookies: SimpleCookie = SimpleCookie(header)
        cookie = cookies["sessionid"].value if "sessionid" in cookies else None
        if cookie is not None:
            self.cookie = cookie or None
        self.pids.add(int(answer.get("pid", 0)))
        return Answer(response.status, answer, cookie, header)

    def get(self) -> dict[str, Any]:
        answer = self.request("GET", "/")
        assert answer.status == 200, answer
        return answer.body

    def post(self, path: str, **form: str) -> Answer:
        answer = self.request("POST", path, form)
        assert answer.status == 200, answer
        return answer


@dataclass
class Server:
    """gunicorn serving the shop: its port and log."""

    port: int
    log: Path

    def browser(self) -> Browser:
        return Browser(self.port)

    def everywhere(self, browser: Browser, tries: int = 60) -> list[dict[str, Any]]:
        """Read the session until both workers answered (each answer kept)."""
        seen: set[int] = set()
        answers: list[dict[str, Any]] = []
        while len(seen) < 2 and len(answers) < tries:
            answers.append(browser.get())
            seen.add(answers[-1]["pid"])
        assert len(seen) == 2, f"one worker answered {tries} requests"
        return answers


@pytest.fixture(scope="module", params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, database: Path
) -> Iterator[Server]:
    """The shop under gunicorn on one store, for this module's tests on that store."""
    folder = tmp_path_factory.mktemp(f"gunicorn-{request.param}")
    if request.param == "file":
        sessions = str(folder / "sessions.json")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        sessions = f"{server.url}?prefix={unique_prefix()}"
    port = free_port()
    log = folder / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "shop.wsgi"],
            cwd=EXAMPLE,
            env=_env(database, sessions),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = Browser(port)  # both workers up: each answered once
        assert wait_until(lambda: _answers(ready), START_SECONDS), log.read_text()[-3000:]
        yield Server(port, log)
    finally:
        process.terminate()
        process.wait(10)
    text = log.read_text()
    assert "Traceback" not in text and "[ERROR]" not in text, text[-3000:]


def _answers(browser: Browser) -> bool:
    """True once both workers answered ``browser``."""
    try:
        browser.get()
    except (OSError, http.client.HTTPException):
        pass
    return len(browser.pids) == 2


def test_a_visitor_who_stores_nothing_gets_no_cookie(shop: Server) -> None:
    visitor = shop.browser()
    answers = shop.everywhere(visitor)
    assert all(answer == {"pid": answer["pid"], "user": None, "cart": []} for answer in answers)
    assert visitor.cookie is None


def test_a_forged_cookie_is_never_adopted(shop: Server) -> None:
    visitor = shop.browser()
    visitor.cookie = FORGED
    answer = visitor.request("GET", "/")
    assert answer.body["cart"] == [] and answer.cookie == ""  # Django deletes it
    visitor.cookie = FORGED
    created = visitor.post("/cart", item="apple").cookie
    assert created and created != FORGED
    assert all(answer["cart"] == ["apple"] for answer in shop.everywhere(visitor))


def test_login_carts_on_both_workers_second_login_and_logout(shop: Server) -> None:
    browser = shop.browser()
    anonymous = browser.post("/cart", item="apple")
    assert anonymous.cookie and re.search(r"Max-Age=\d+(;|$)", anonymous.header)
    assert "HttpOnly" in anonymous.header and "SameSite=Lax" in anonymous.header

    alice = browser.post("/login", username="alice", password=PASSWORD)
    assert alice.cookie and alice.cookie != anonymous.cookie
    assert alice.body["user"] == "alice" and alice.body["cart"] == ["apple"]
    for answer in shop.everywhere(browser):
        assert (answer["user"], answer["cart"]) == ("alice", ["apple"])

    cart = ["apple"]
    served = set()
    for n in range(CART_CHANGES):
        changed = browser.post("/cart", item=f"item{n}")
        cart.append(f"item{n}")
        assert changed.body["cart"] == cart and changed.cookie == alice.cookie
        served.add(changed.body["pid"])
    assert len(served) == 2, "every cart change landed on one worker"
    assert all(answer["cart"] == cart for answer in shop.everywhere(browser))

    replay = shop.browser()
    replay.cookie = anonymous.cookie
    assert all(answer["user"] is None for answer in shop.everywhere(replay))

    bob = browser.post("/login", username="bob", password=PASSWORD)
    assert bob.cookie and bob.cookie != alice.cookie and bob.body["user"] == "bob"
    replay.cookie = alice.cookie
    assert all(answer["user"] is None for answer in shop.everywhere(replay))

    out = browser.post("/logout")
    assert out.cookie == "" and out.body["user"] is None
    replay.cookie = bob.cookie
    assert all(answer["user"] is None for answer in shop.everywhere(replay))
