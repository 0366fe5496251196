"""One small shop app per framework, for the test clients and for the real servers the
end-to-end tests start (``gunicorn "tests.webapps:flask_app()"``, ``uvicorn --factory
tests.webapps:fastapi_app``).

Every app answers the same routes with ``{"pid", "user", "cart"}``: ``GET /`` reads the
session, ``POST /cart/<n>`` appends to the cart in place, ``POST /login/<name>`` and
``POST /logout``; ``GET /ping`` never touches it and answers ``{"pid"}`` alone. With no
backend given, the store is ``$WEB_BACKEND``; ``$WEB_WARM=1`` starts the Flask service at
import (so gunicorn ``--preload`` forks a live service).
"""

from __future__ import annotations

import os
from typing import Any

import flask
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pooled_sessions.integrations import flask as flask_sessions
from pooled_sessions.integrations import starlette as starlette_sessions
from pooled_sessions.integrations.request_state import RequestSession

FAST: dict[str, Any] = {"sync_interval_seconds": 0.05}
"""Settings of every app here: a file's changes by other workers are looked for often."""


def view(session: RequestSession) -> dict[str, Any]:
    """What every route answers: the worker, the session's user and its cart."""
    return {"pid": os.getpid(), "user": session.username, "cart": session.get("cart")}


def _backend(backend: str | None) -> str:
    return backend or os.environ["WEB_BACKEND"]


def flask_app(backend: str | None = None, **settings: Any) -> flask.Flask:
    """The shop on Flask."""
    app = flask.Flask(__name__)
    app.config.update(settings.pop("config", {}))
    extension = flask_sessions.PooledSessions(app, backend=_backend(backend), **FAST, **settings)
    if os.environ.get("WEB_WARM") == "1":
        extension.service.stats()

    def current() -> dict[str, Any]:
        return view(flask_sessions._session())

    @app.get("/")
    def read() -> Any:
        return current()

    @app.get("/ping")
    def ping() -> dict[str, int]:
        return {"pid": os.getpid()}

    @app.post("/cart/<int:item>")
    def add(item: int) -> Any:
        flask.session.setdefault("cart", []).append(item)
        return current()

    @app.post("/login/<name>")
    def login(name: str) -> Any:
        flask_sessions.login(name)
        return current()

    @app.post("/logout")
    def logout() -> Any:
        flask_sessions.logout()
        return current()

    return app


async def _read(request: Request) -> JSONResponse:
    return JSONResponse(view(request.session))  # type: ignore[arg-type]


async def _ping(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


async def _add(request: Request) -> JSONResponse:
    request.session.setdefault("cart", []).append(int(request.path_params["item"]))
    return await _read(request)


async def _login(request: Request) -> JSONResponse:
    await starlette_sessions.login(request, request.path_params["name"])
    return await _read(request)


async def _logout(request: Request) -> JSONResponse:
    await starlette_sessions.logout(request)
    return await _read(request)


ROUTES = [
    Route("/", _read),
    Route("/ping", _ping),
    Route("/cart/{item:int}", _add, methods=["POST"]),
    Route("/login/{name}", _login, methods=["POST"]),
    Route("/logout", _logout, methods=["POST"]),
]


def starlette_app(backend: str | None = None, **settings: Any) -> Starlette:
    """The shop on Starlette."""
    app = Starlette(routes=ROUTES)
    app.add_middleware(
        starlette_sessions.SessionMiddleware, backend=_backend(backend), **FAST, **settings
    )
    return app


def fastapi_app(backend: str | None = None, **settings: Any) -> FastAPI:
    """The shop on FastAPI (the same routes, as FastAPI path operations)."""
    app = FastAPI()
    app.add_middleware(
        starlette_sessions.SessionMiddleware, backend=_backend(backend), **FAST, **settings
    )

    @app.get("/")
    async def read(request: Request) -> JSONResponse:
        return await _read(request)

    @app.get("/ping")
    async def ping() -> dict[str, int]:
        return {"pid": os.getpid()}

    @app.post("/cart/{item}")
    async def add(item: int, request: Request) -> JSONResponse:
        request.session.setdefault("cart", []).append(item)
        return await _read(request)

    @app.post("/login/{name}")
    async def login(name: str, request: Request) -> JSONResponse:
        await starlette_sessions.login(request, name)
        return await _read(request)

    @app.post("/logout")
    async def logout(request: Request) -> JSONResponse:
        await starlette_sessions.logout(request)
        return await _read(request)

    return app
