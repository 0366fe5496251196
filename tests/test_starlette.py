"""What is Starlette's own in the Starlette integration: the middleware's cookie
parameters, ``max_age`` as the expiry, the service's life with the lifespan and with a
test client that runs each request on an event loop of its own, websockets, the helpers
outside the middleware, and the error when Starlette is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from pooled_sessions.errors import ConfigError, SessionError
from pooled_sessions.integrations.starlette import SessionMiddleware, login, logout
from tests import webapps
from tests.webkit import import_error


def middleware_of(app: Starlette) -> SessionMiddleware:
    """The app's `SessionMiddleware` instance (Starlette builds it at the first call)."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, SessionMiddleware):
        layer = layer.app
    return layer


def test_the_cookie_parameters_are_starlettes(tmp_path: Path) -> None:
    app = webapps.starlette_app(
        str(tmp_path / "s.json"),
        session_cookie="sid",
        path="/shop",
        same_site="strict",
        https_only=True,
        domain="shop.example",
        max_age=600,
    )
    with TestClient(app) as client:
        header = client.post("/login/alice").headers["set-cookie"]
    assert header.startswith("sid=")
    parts = header.split("; ")
    for part in ("HttpOnly", "Secure", "SameSite=Strict", "Domain=shop.example", "Path=/shop"):
        assert part in parts, header
    assert "Max-Age=600" in parts, "max_age is the idle expiry, and so the cookie's lifetime"


def test_max_age_and_expire_minutes_together_are_refused(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(ConfigError, match="max_age or expire_minutes"):
        SessionMiddleware(app, str(tmp_path / "s.json"), max_age=60, expire_minutes=1)
    with pytest.raises(ConfigError, match="unknown setting"):
        SessionMiddleware(app, str(tmp_path / "s.json"), secret_key="x")


def test_the_lifespan_opens_and_closes_the_service(tmp_path: Path) -> None:
    app = webapps.starlette_app(str(tmp_path / "s.json"))
    with TestClient(app) as client:
        middleware = middleware_of(app)
        assert middleware._service is not None, "started with the lifespan"
        service = middleware._service
        client.post("/login/alice")
        assert client.get("/").json()["user"] == "alice"
    assert middleware._service is None
    assert service._closed, "shut down with the lifespan"


def test_a_client_running_each_request_on_its_own_loop_is_served(tmp_path: Path) -> None:
    client = TestClient(webapps.fastapi_app(f"aiofile://{tmp_path / 's.json'}"))
    client.post("/login/alice")
    for item in range(3):
        assert client.post(f"/cart/{item}").json()["cart"] == list(range(item + 1))
    assert client.get("/").json()["user"] == "alice"
    client.post("/logout")
    assert client.get("/").json()["user"] is None


def test_a_websocket_reads_the_session(tmp_path: Path) -> None:
    async def who(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(str(websocket.session.get("name")))
        await websocket.close()

    async def name(request: Request) -> PlainTextResponse:
        request.session["name"] = "gina"
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/name", name), WebSocketRoute("/who", who)])
    app.add_middleware(SessionMiddleware, backend=str(tmp_path / "s.json"))
    with TestClient(app) as client:
        client.get("/name")
        with client.websocket_connect("/who") as websocket:
            assert websocket.receive_text() == "gina"


async def test_the_helpers_refuse_a_request_without_the_middleware() -> None:
    request = Request({"type": "http", "headers": [], "method": "GET", "path": "/"})
    with pytest.raises(SessionError, match="SessionMiddleware"):
        await login(request, "hal")
    with pytest.raises(SessionError, match="SessionMiddleware"):
        await logout(request)


def test_without_starlette_the_import_names_the_extra_to_install() -> None:
    error = import_error("pooled_sessions.integrations.starlette", "starlette")
    assert error.startswith("MissingDependencyError")
    assert 'pip install "pooled-sessions[starlette]"' in error


async def test_requests_arriving_together_share_one_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import httpx

    from pooled_sessions import AsyncSessionService
    from pooled_sessions.integrations import starlette as integration

    built: list[Any] = []
    real = AsyncSessionService

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(integration, "AsyncSessionService", counted)
    app = webapps.starlette_app(str(tmp_path / "s.json"))
    transport = httpx.ASGITransport(app=app)  # no lifespan: the first requests start it
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        answers = await asyncio.gather(*(client.post(f"/login/u{n}") for n in range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert len(built) == 1
    await middleware_of(app).shutdown()


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"session_cookie": "my session"}, "not a valid cookie name"),
        ({"session_cookie": "a;b"}, "not a valid cookie name"),
        ({"path": "/a;b"}, "cookie path"),
        ({"domain": "shop.example; Secure"}, "cookie domain"),
        ({"same_site": "sometimes"}, "same_site"),
    ],
)
def test_a_cookie_the_browser_could_not_read_is_refused_at_start(
    tmp_path: Path, options: dict[str, Any], needle: str
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(ConfigError, match=needle):
        SessionMiddleware(app, str(tmp_path / "s.json"), **options)
