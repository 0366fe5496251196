"""Starlette and FastAPI sessions on pooled_sessions: ``request.session`` held by an
`AsyncSessionService`, so no request blocks the event loop.

``app.add_middleware(SessionMiddleware, backend="redis://...")`` takes the parameters of
Starlette's own ``SessionMiddleware`` (no secret: the cookie carries only a random id);
what a request does with its session is decided in `request_state`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Literal

from pooled_sessions.client_ip import ClientIPResolver
from pooled_sessions.config import Settings
from pooled_sessions.errors import ConfigError, SessionError
from pooled_sessions.integrations import missing
from pooled_sessions.integrations.request_state import (
    CookieUpdate,
    RequestSession,
    adrive,
    closing,
    cookie_update,
    opening,
)
from pooled_sessions.model import ClientInfo
from pooled_sessions.service_async import AsyncSessionService

try:
    from starlette.datastructures import MutableHeaders
    from starlette.requests import HTTPConnection
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - the extra is installed for the tests
    raise missing("Starlette", "starlette") from exc

logger = logging.getLogger("session_service")


class StarletteSession(RequestSession):
    """``request.session``: a `RequestSession` that notes whether the app looked at it (so
    the response varies by cookie)."""

    accessed = False
    client: ClientInfo | None = None

    def mark_accessed(self) -> None:
        """Called by Starlette's ``request.session``."""
        self.accessed = True


class SessionMiddleware:
    """A pure ASGI middleware putting a `StarletteSession` in ``scope["session"]``.

    ``max_age`` (seconds) is the sessions' idle expiry and so the cookie's lifetime, which
    slides with it (``expire_minutes`` otherwise, 30 by default); ``client_ip`` says which
    proxies to believe for the client's address; any other keyword is a `Settings` field.
    The service starts at the lifespan's startup (or the first request of an event loop)
    and shuts down at its shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        backend: str | None = None,
        session_cookie: str = "session",
        max_age: int | None = None,
        path: str = "/",
        same_site: Literal["lax", "strict", "none"] = "lax",
        https_only: bool = False,
        domain: str | None = None,
        *,
        client_ip: ClientIPResolver | None = None,
        **settings: Any,
    ) -> None:
        if backend is not None:
            settings["backend"] = backend
        if max_age is not None:
            if "expire_minutes" in settings:
                raise ConfigError("give max_age or expire_minutes, not both")
            settings["expire_minutes"] = max_age / 60.0
        self.app = app
        self.settings = Settings.load(**settings)
        self.session_cookie = session_cookie
        self.resolver = client_ip or ClientIPResolver()
        self.cookie_flags = _cookie_flags(session_cookie, path, same_site, https_only, domain)
        self._service: AsyncSessionService | None = None
        self._opening: asyncio.Future[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan(send))
        elif scope["type"] in ("http", "websocket"):
            await self._serve(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def service(self) -> AsyncSessionService:
        """The service of the running event loop, started now if it was not.

        One loop at a time: a service left by a loop that has gone (a test client without
        ``with`` runs each request on a loop of its own) is shut down first.
        """
        loop = asyncio.get_running_loop()
        service = self._service
        if service is not None and service._loop not in (None, loop):
            self._service = None
            await _retire(service)
            service = None
        if service is None:  # requests arriving meanwhile wait for this one start
            service = self._service = AsyncSessionService(settings=self.settings)
            self._opening = loop.create_task(service.__aenter__())
        opening = self._opening
        assert opening is not None  # set with every service
        try:
            await opening
        except BaseException:
            if self._service is service:  # the next request tries again
                self._service = None
            raise
        return service

    async def shutdown(self) -> None:
        """Shut the service down (the lifespan's shutdown does)."""
        service, self._service = self._service, None
        if service is not None:
            await service.shutdown()

    def _lifespan(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.service()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.shutdown()
            await send(message)

        return sending

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = await self.service()
        connection = HTTPConnection(scope)
        sent = connection.cookies.get(self.session_cookie)
        agent = connection.headers.get("user-agent")
        client = ClientInfo(self.resolver.from_asgi(scope), agent)
        session = await adrive(service, opening(sent, client, StarletteSession))
        scope["session"] = session

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                sid = await adrive(service, closing(session, client))
                update = cookie_update(self.settings, session, sent, sid, time.time())
                headers = MutableHeaders(scope=message)
                if session.accessed or update is not None:
                    headers.add_vary_header("Cookie")
                if update is not None:
                    headers.append("Set-Cookie", self._cookie(update))
            await send(message)

        await self.app(scope, receive, sending if scope["type"] == "http" else send)

    def _cookie(self, update: CookieUpdate) -> str:
        """The ``Set-Cookie`` value for ``update`` (an expired, empty one deletes)."""
        if update.value is None:
            return f"{self.session_cookie}=; Max-Age=0; Expires={_EPOCH}{self.cookie_flags}"
        return f"{self.session_cookie}={update.value}; Max-Age={update.max_age}{self.cookie_flags}"


_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a cookie name (RFC 6265, RFC 9110 token)
_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")  # printable ASCII but ';' (a path or domain)


def _cookie_flags(
    name: str, path: str, same_site: str, https_only: bool, domain: str | None
) -> str:
    """The attributes every session cookie carries, written once (session ids need no
    quoting: they are URL-safe); a name, path or domain a cookie cannot hold is refused."""
    if not _TOKEN.fullmatch(name):
        raise ConfigError(f"session_cookie {name[:40]!r} is not a valid cookie name")
    if same_site.lower() not in ("lax", "strict", "none"):
        raise ConfigError(f"same_site must be lax, strict or none, not {same_site[:20]!r}")
    flags = ""
    for label, value in (("Path", path), ("Domain", domain)):
        if value is not None:
            if not _ATTRIBUTE.fullmatch(value):
                raise ConfigError(f"cookie {label.lower()} {value[:60]!r} cannot be sent")
            flags += f"; {label}={value}"
    flags += f"; HttpOnly; SameSite={same_site.capitalize()}"
    return flags + "; Secure" if https_only else flags


async def _retire(service: AsyncSessionService) -> None:
    """Shut down a service whose event loop has gone; what it cannot write is logged."""
    try:
        await service.shutdown()
    except Exception:
        logger.warning("a session service of a finished event loop did not shut down cleanly")


def _session(request: HTTPConnection) -> StarletteSession:
    session = request.scope.get("session")
    if not isinstance(session, StarletteSession):
        raise SessionError("request.session is not pooled_sessions' (add SessionMiddleware)")
    return session


async def login(request: HTTPConnection, username: str) -> None:
    """Log ``username`` in on ``request``'s session: when the response starts the session
    gets a new id (never the one the client sent) with the user bound."""
    _session(request).login(username)


async def logout(request: HTTPConnection) -> None:
    """End ``request``'s session everywhere when the response starts; it is empty now."""
    _session(request).logout()
