"""One small web app, side by side in one run: sessions by pooled_sessions, by its peers on
the same Redis, and no sessions at all.

Apps: Flask with `integrations.flask` against Flask-Session (Redis, its defaults), and
FastAPI with `integrations.starlette` against starsessions (`RedisStore`, rolling expiry,
autoloaded), each also with no session layer. The apps are called in-process (WSGI and
ASGI, no HTTP server or client), so what differs between the rows is the session layer.

Workload: ``--clients`` visitors log in (not timed), then ``--requests`` requests spread
over them: 89% read the cart, 10% add to it, 1% log out and in again. Reported per row:
requests/s, p99 latency, and Redis commands per request (INFO commandstats: all that Redis
ran, and what was sent: for pooled_sessions, without the commands its Lua scripts run,
`bench_redis.SCRIPT_ONLY`). The session layer's
cost is the share of requests/s lost against the same app with no sessions.

Run: ``.venv/bin/python benchmarks/bench_web.py [--quick]`` (starts its own redis-server;
needs the ``bench`` extra: Flask-Session, starsessions, FastAPI).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi import FastAPI, Request  # noqa: E402  (module level: FastAPI reads the hints)

from benchmarks.bench_redis import SCRIPT_ONLY  # noqa: E402
from pooled_sessions.integrations import flask as pooled_flask  # noqa: E402
from tests.redis_servers import RedisServer, commands_called, unique_prefix  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
READ, ADD, RELOG = "/cart", "/add", "/relog"
COOKIE = "session"
SAVE_DELAY = 5.0  # pooled_sessions' default save_delay_seconds: touches written within it
Handler = Callable[[str, str, str | None], tuple[str | None, bool]]
"""One request: (path, user, cookie) -> (cookie after it, whether the client must drop it)."""


# -- Flask ------------------------------------------------------------------------------------


def flask_app(layer: str, url: str, prefix: str) -> Any:
    """The Flask app with ``layer``: "none", "pooled" or "flask-session"."""
    from flask import Flask, jsonify, request, session

    app = Flask(__name__)
    app.config["SESSION_COOKIE_SECURE"] = False
    state: dict[str, Any] = {}
    log_in: Callable[[str], None] = print  # replaced below: "none" never logs in
    log_out: Callable[[], None] = print
    if layer == "pooled":
        from pooled_sessions.integrations import flask as pooled

        pooled.PooledSessions(app, backend=f"{url}?prefix={prefix}")
        log_in, log_out = pooled.login, pooled.logout
    elif layer == "flask-session":
        import redis
        from flask_session import Session

        app.config.update(
            SESSION_TYPE="redis",
            SESSION_REDIS=redis.Redis.from_url(url),
            SESSION_KEY_PREFIX=f"{prefix}:",
        )
        Session(app)

        def regenerate(user: str) -> None:
            app.session_interface.regenerate(session)  # type: ignore[attr-defined]
            session["user"] = user

        def clear() -> None:
            session.clear()

        log_in, log_out = regenerate, clear

    @app.get("/login")
    def login() -> Any:
        user = request.args["u"]
        if layer == "none":
            state[user] = []
        else:
            log_in(user)
            session["cart"] = []
        return jsonify(ok=True)

    @app.get(READ)
    def cart() -> Any:
        items = state.get(request.args["u"], []) if layer == "none" else session.get("cart", [])
        return jsonify(items=len(items))

    @app.get(ADD)
    def add() -> Any:
        if layer == "none":
            state.setdefault(request.args["u"], []).append(1)
        else:
            session["cart"] = [*session.get("cart", []), 1]
        return jsonify(ok=True)

    @app.get("/logout")
    def logout() -> Any:
        if layer != "none":
            log_out()
        return jsonify(ok=True)

    return app


def wsgi_client(app: Any) -> Handler:
    """Call a WSGI app directly with a minimal environ; the cookie it sets."""

    def call(path: str, user: str, cookie: str | None) -> tuple[str | None, bool]:
        headers: list[tuple[str, str]] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> Any:
            assert status.startswith("200"), status
            headers.extend(response_headers)

        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": f"u={user}",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "203.0.113.7",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
        }
        if cookie:
            environ["HTTP_COOKIE"] = f"{COOKIE}={cookie}"
        body = app(environ, start_response)
        b"".join(body)
        if hasattr(body, "close"):
            body.close()
        return _set_cookie(headers, cookie)

    return call


# -- FastAPI ----------------------------------------------------------------------------------


def fastapi_app(layer: str, url: str, prefix: str) -> Any:
    """The FastAPI app with ``layer``: "none", "pooled" or "starsessions"."""
    app = FastAPI()
    state: dict[str, Any] = {}
    log_in: Any = None
    log_out: Any = None
    if layer == "pooled":
        from pooled_sessions.integrations import starlette as pooled

        app.add_middleware(pooled.SessionMiddleware, backend=f"{url}?prefix={prefix}")
        log_in, log_out = pooled.login, pooled.logout
    elif layer == "starsessions":
        import starsessions
        from starsessions.stores.redis import RedisStore

        app.add_middleware(starsessions.SessionAutoloadMiddleware)
        app.add_middleware(
            starsessions.SessionMiddleware,
            store=RedisStore(url, prefix=f"{prefix}:"),
            lifetime=1800,
            rolling=True,
            cookie_https_only=False,
        )

        async def log_in(request: Request, user: str) -> None:
            starsessions.regenerate_session_id(request)
            request.session["user"] = user

        async def log_out(request: Request) -> None:
            request.session.clear()

    @app.get("/login")
    async def login(request: Request, u: str) -> dict[str, Any]:
        if layer == "none":
            state[u] = []
        else:
            await log_in(request, u)
            request.session["cart"] = []
        return {"ok": True}

    @app.get(READ)
    async def cart(request: Request, u: str) -> dict[str, Any]:
        items = state.get(u, []) if layer == "none" else request.session.get("cart", [])
        return {"items": len(items)}

    @app.get(ADD)
    async def add(request: Request, u: str) -> dict[str, Any]:
        if layer == "none":
            state.setdefault(u, []).append(1)
        else:
            request.session["cart"] = [*request.session.get("cart", []), 1]
        return {"ok": True}

    @app.get("/logout")
    async def logout(request: Request, u: str) -> dict[str, Any]:
        if layer != "none":
            await log_out(request)
        return {"ok": True}

    return app


class AsgiClient:
    """Call an ASGI app directly on one event loop, its lifespan started and stopped."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = self.loop.create_task(self._lifespan())
        self.loop.run_until_complete(self._send_lifespan("startup"))

    async def _lifespan(self) -> None:
        async def receive() -> dict[str, Any]:
            return await self._events.get()

        async def send(message: dict[str, Any]) -> None:
            self._done.set_result(message)

        await self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    async def _send_lifespan(self, what: str) -> None:
        self._done: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        await self._events.put({"type": f"lifespan.{what}"})
        message = await self._done
        assert message["type"] == f"lifespan.{what}.complete", message

    def close(self) -> None:
        self.loop.run_until_complete(self._send_lifespan("shutdown"))
        self.loop.run_until_complete(self._task)
        self.loop.close()

    def __call__(self, path: str, user: str, cookie: str | None) -> tuple[str | None, bool]:
        return self.loop.run_until_complete(self._request(path, user, cookie))

    async def _request(self, path: str, user: str, cookie: str | None) -> tuple[str | None, bool]:
        headers: list[tuple[str, str]] = []
        headers_in = [(b"host", b"bench")]
        if cookie:
            headers_in.append((b"cookie", f"{COOKIE}={cookie}".encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": f"u={user}".encode(),
            "root_path": "",
            "headers": headers_in,
            "client": ("203.0.113.7", 5000),
            "server": ("bench", 80),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200, message
                headers.extend((k.decode(), v.decode()) for k, v in message["headers"])

        await self.app(scope, receive, send)
        return _set_cookie(headers, cookie)


def _set_cookie(headers: Sequence[tuple[str, str]], cookie: str | None) -> tuple[str | None, bool]:
    """The session cookie after a response: the one it set, or the one the client had.

    Read with plain string operations, as a browser's cost is no part of the server's
    (`http.cookies` would add tens of µs to every row with a session).
    """
    prefix = COOKIE + "="
    for name, value in headers:
        if name.lower() == "set-cookie" and value.startswith(prefix):
            first, _, rest = value.partition(";")
            held = first[len(prefix) :].strip('"')
            flags = rest.lower().replace(" ", "")
            dropped = not held or "max-age=0" in flags or "max-age=-1" in flags
            return (None, True) if dropped else (held, False)
    return cookie, False


# -- the run ----------------------------------------------------------------------------------


def run(
    call: Handler, clients: int, requests: int, seed: int, timed: Callable[[], None]
) -> dict[str, float]:
    """Log ``clients`` in, call ``timed``, then time ``requests`` requests of the mix;
    requests/s and p99."""
    users = [f"user{n}" for n in range(clients)]
    cookies: dict[str, str | None] = {}
    for user in users:
        cookies[user], _ = call("/login", user, None)
    timed()
    rng = random.Random(seed)
    plan = [(rng.choice(users), rng.random()) for _ in range(requests)]
    latencies: list[float] = []
    started = time.perf_counter()
    for user, roll in plan:
        begin = time.perf_counter()
        if roll < 0.89:
            cookies[user], _ = call(READ, user, cookies[user])
        elif roll < 0.99:
            cookies[user], _ = call(ADD, user, cookies[user])
        else:
            call("/logout", user, cookies[user])
            cookies[user], _ = call("/login", user, None)
        latencies.append(time.perf_counter() - begin)
    wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": requests / wall, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


def measure(
    server: RedisServer, framework: str, layer: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One row: the app built, driven, and the Redis commands its timed requests cost
    (counted once the touches pooled_sessions writes behind are written)."""
    before: dict[str, int] = {}

    def timed() -> None:
        before.update(commands_called(server))

    builder = flask_app if framework == "flask" else fastapi_app
    app = builder(layer, server.url, unique_prefix())
    client: Any = wsgi_client(app) if framework == "flask" else AsgiClient(app)
    try:
        row = run(
            client,
            args.clients,
            args.requests,
            args.seed,
            lambda: before.update(commands_called(server)),
        )
        if layer == "pooled":
            time.sleep(SAVE_DELAY + 1.0)
    finally:
        if isinstance(client, AsgiClient):
            client.close()
    after = commands_called(server)
    if framework == "flask" and layer == "pooled":  # before its Redis stops (at exit)
        app.extensions[pooled_flask.EXTENSION].shutdown()
    calls = {c: after.get(c, 0) - before.get(c, 0) for c in after}
    calls = {c: n for c, n in calls.items() if n > 0 and c not in ("info",)}
    script_only = SCRIPT_ONLY if layer == "pooled" else set()  # the peers send every command
    sent = sum(n for c, n in calls.items() if c not in script_only)
    return {
        **row,
        "framework": framework,
        "layer": layer,
        "sent_per_request": sent / args.requests,
        "all_per_request": sum(calls.values()) / args.requests,
        "commands": calls,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: each session layer beside the same app with none."""
    base = {r["framework"]: r["rps"] for r in rows if r["layer"] == "none"}
    out = [
        "| app | sessions | requests/s | p99 | Redis commands / request (sent; all) "
        "| requests/s lost to the session layer |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lost = "-" if r["layer"] == "none" else f"{1 - r['rps'] / base[r['framework']]:.0%}"
        cmds = (
            "-"
            if r["layer"] == "none"
            else (f"{r['sent_per_request']:.3f}; {r['all_per_request']:.3f}")
        )
        out.append(
            f"| {r['framework']} | {r['layer']} | {r['rps']:,.0f} | {r['p99_ms']:.2f} ms "
            f"| {cmds} | {lost} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every row once, in one process, and print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="visitors logged in")
    parser.add_argument("--requests", type=int, default=10_000, help="timed requests per row")
    parser.add_argument("--seed", type=int, default=7, help="the request mix's random seed")
    parser.add_argument("--quick", action="store_true", help="a short run (1,000 requests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 50, 1_000
    layers = {
        "flask": ("none", "pooled", "flask-session"),
        "fastapi": ("none", "pooled", "starsessions"),
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        server = RedisServer(Path(scratch)).start()
        try:
            for framework, names in layers.items():
                for layer in names:
                    rows.append(measure(server, framework, layer, args))
        finally:
            server.stop()
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{args.clients} clients, {args.requests:,} requests per row\n"
    )
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "web.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
