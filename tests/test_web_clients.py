"""The web integrations through each framework's own test client: Flask's
``app.test_client()``, Starlette's ``TestClient`` on a Starlette and a FastAPI app; on the
JSON file and on a real redis-server. The same shop (tests/webapps.py) and the same checks
for all three.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests import webapps
from tests.webkit import COOKIE, EXPIRE_MINUTES, Browser, Reply, Send, Store

ROOT = Path(__file__).resolve().parents[1]


def flask_send(app: Any) -> Iterator[Send]:
    client = app.test_client(use_cookies=False)

    def send(method: str, path: str, cookie: str | None) -> Reply:
        headers = {} if cookie is None else {"Cookie": f"{COOKIE}={cookie}"}
        response = client.open(path, method=method, headers=headers)
        body = response.get_json(silent=True)
        return Reply(response.status_code, body, response.headers.getlist("Set-Cookie"))

    yield send


def starlette_send(app: Any) -> Iterator[Send]:
    with TestClient(app) as client:

        def send(method: str, path: str, cookie: str | None) -> Reply:
            client.cookies.clear()
            headers = {} if cookie is None else {"Cookie": f"{COOKIE}={cookie}"}
            response = client.request(method, path, headers=headers)
            json_body = response.headers.get("content-type", "").startswith("application/json")
            body = response.json() if json_body else response.text
            return Reply(response.status_code, body, response.headers.get_list("set-cookie"))

        yield send


FRAMEWORKS: dict[str, tuple[Callable[..., Any], Callable[[Any], Iterator[Send]]]] = {
    "flask": (webapps.flask_app, flask_send),
    "starlette": (webapps.starlette_app, starlette_send),
    "fastapi": (webapps.fastapi_app, starlette_send),
}


@dataclass
class Shop:
    """The shop app on one framework and one store; `browser` is a new visitor."""

    send: Send
    store: Store

    def browser(self, cookie: str | None = None) -> Browser:
        return Browser(self.send, cookie)


@pytest.fixture(params=list(FRAMEWORKS))
def shop(request: pytest.FixtureRequest, web_store: Store) -> Iterator[Shop]:
    build, sender = FRAMEWORKS[request.param]
    app = build(web_store.url, expire_minutes=EXPIRE_MINUTES)
    for send in sender(app):
        yield Shop(send, web_store)
    if request.param == "flask":
        app.extensions["pooled_sessions"].shutdown()


def test_the_cookie_is_httponly_samesite_lax_with_an_integer_max_age(shop: Shop) -> None:
    cookie = shop.browser().post("/cart/1").cookie
    assert cookie is not None
    assert cookie["max-age"] == str(EXPIRE_MINUTES * 60), cookie["raw"]
    assert cookie["httponly"] and cookie["samesite"].lower() == "lax"
    assert cookie["path"] == "/" and "secure" not in cookie and "domain" not in cookie
    assert "Max-Age=1800;" in cookie["raw"] + ";"


def test_a_visitor_who_stores_nothing_gets_no_cookie_and_no_stored_session(shop: Shop) -> None:
    visitor = shop.browser()
    assert visitor.get("/ping").set_cookies == []
    before = shop.store.snapshot()
    for _ in range(3):
        reply = visitor.get("/")
        assert reply.set_cookies == [] and reply.body["cart"] is None
    assert shop.store.snapshot() == before
    assert shop.store.session_count() == 0


@pytest.mark.parametrize("forged", ["forged-id", "x" * 43, "../../etc/passwd", "a" * 5000])
def test_a_forged_cookie_is_never_adopted(shop: Shop, forged: str) -> None:
    visitor = shop.browser(forged)
    reply = visitor.get("/")
    assert reply.body == {"pid": reply.body["pid"], "user": None, "cart": None}
    assert reply.cookie is not None and reply.cookie["max-age"] == "0", "the bad cookie goes"
    assert visitor.cookie is None
    visitor.cookie = forged
    stored = visitor.post("/cart/7")
    assert visitor.cookie is not None and visitor.cookie != forged
    assert stored.body["cart"] == [7]
    with shop.store.peer() as peer:
        assert not peer.validate_session(forged)
        assert peer.get_session(visitor.cookie) is not None


def test_an_ended_sessions_cookie_starts_a_new_session_with_a_new_id(shop: Shop) -> None:
    visitor = shop.browser()
    visitor.post("/login/alice")
    old = visitor.cookie
    assert old is not None
    with shop.store.peer() as peer:
        assert peer.end_session(old)
    reply = visitor.get("/")
    assert reply.body["user"] is None and visitor.cookie is None
    visitor.cookie = old
    visitor.post("/cart/1")
    assert visitor.cookie not in (None, old)


def test_login_rotates_the_id_and_keeps_the_cart(shop: Shop) -> None:
    visitor = shop.browser()
    visitor.post("/cart/1")
    anonymous = visitor.cookie
    visitor.post("/login/alice")
    first = visitor.cookie
    assert first not in (None, anonymous)
    assert visitor.get().body["user"] == "alice" and visitor.get().body["cart"] == [1]
    replay = shop.browser(anonymous).get().body
    assert replay["user"] is None and replay["cart"] is None, "the anonymous id is gone"
    visitor.post("/login/alice")
    assert visitor.cookie not in (None, first, anonymous), "a second login rotates again"
    with shop.store.peer() as peer:
        assert peer.sessions_of("alice") == [visitor.cookie]


def test_logout_ends_the_session_everywhere(shop: Shop) -> None:
    visitor = shop.browser()
    visitor.post("/login/bob")
    visitor.post("/cart/5")
    sid = visitor.cookie
    assert sid is not None
    reply = visitor.post("/logout")
    assert reply.cookie is not None and reply.cookie["max-age"] == "0"
    assert visitor.cookie is None
    with shop.store.peer() as peer:
        assert not peer.validate_session(sid)
        assert peer.sessions_of("bob") == []
    replay = shop.browser(sid).get()
    assert replay.body["user"] is None and replay.body["cart"] is None


def test_changes_made_in_place_are_saved(shop: Shop) -> None:
    visitor = shop.browser()
    for item in (3, 1, 4):
        visitor.post(f"/cart/{item}")
    assert visitor.cookie is not None
    with shop.store.peer() as peer:
        session = peer.get_session(visitor.cookie)
        assert session is not None and session.attributes == {"cart": [3, 1, 4]}


def test_a_request_that_changes_nothing_writes_nothing(shop: Shop) -> None:
    visitor = shop.browser()
    visitor.post("/login/carol")
    visitor.post("/cart/2")
    before = shop.store.snapshot()
    for _ in range(5):
        assert visitor.get().body["cart"] == [2]
    assert shop.store.snapshot() == before
    visitor.post("/cart/3")
    assert shop.store.snapshot() != before


@pytest.mark.parametrize(
    ("example", "framework"), [("flask_app", "flask"), ("fastapi_app", "fastapi")]
)
def test_the_example_apps_keep_a_cart_through_login_and_logout(
    example: str, framework: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONS_BACKEND", str(tmp_path / "sessions.json"))
    app = runpy.run_path(str(ROOT / "examples" / f"{example}.py"))["app"]
    for send in FRAMEWORKS[framework][1](app):
        visitor = Browser(send)
        assert visitor.get().set_cookies == []
        assert visitor.post("/cart/3").body["cart"] == [3]
        anonymous = visitor.cookie
        assert visitor.post("/login/alice").body["cart"] == [3]
        assert visitor.cookie not in (None, anonymous)
        visitor.post("/logout")
        assert visitor.cookie is None and visitor.get().body["cart"] == []
    if framework == "flask":
        app.extensions["pooled_sessions"].shutdown()
