"""Flask sessions on pooled_sessions: ``flask.session`` held by a `SessionService`.

``PooledSessions(app, backend="redis://...")`` (or ``PooledSessions().init_app(app)``)
installs a `SessionInterface` that honours Flask's ``SESSION_COOKIE_*`` settings; what a
request does with its session is decided in `request_state`. `login` and `logout` act on
the session of the request being served.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from pooled_sessions.client_ip import ClientIPResolver
from pooled_sessions.config import Settings
from pooled_sessions.errors import SessionError
from pooled_sessions.integrations import missing
from pooled_sessions.integrations.request_state import (
    RequestSession,
    closing,
    cookie_update,
    drive,
    opening,
)
from pooled_sessions.model import ClientInfo
from pooled_sessions.service import SessionService

try:
    import flask
    from flask.sessions import SessionInterface, SessionMixin
except ImportError as exc:  # pragma: no cover - the extra is installed for the tests
    raise missing("Flask", "flask") from exc

EXTENSION = "pooled_sessions"
"""The key of `PooledSessions` in ``app.extensions``."""


class FlaskSession(RequestSession, SessionMixin):  # type: ignore[override]  # `new` is read-only
    """``flask.session``: a `RequestSession` with Flask's session attributes.

    Every session's cookie lasts as long as its sliding expiry, so ``permanent`` is always
    True and setting it changes nothing (nothing is stored for it).
    """

    client: ClientInfo | None = None

    @property
    def permanent(self) -> bool:
        return True

    @permanent.setter
    def permanent(self, value: bool) -> None:
        pass


class PooledSessions:
    """The Flask extension: one `SessionService` per app and process, started at the first
    request and shut down at exit.

    ``backend`` is a path or store URL; ``client_ip`` says which proxies to believe for the
    client's address (none by default: the peer address); any other keyword is a
    `Settings` field. ``PERMANENT_SESSION_LIFETIME``, when the app sets it, is the idle
    expiry unless ``expire_minutes`` is given.
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        backend: str | None = None,
        client_ip: ClientIPResolver | None = None,
        **settings: Any,
    ) -> None:
        if backend is not None:
            settings["backend"] = backend
        self.options = settings
        self.resolver = client_ip or ClientIPResolver()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Serve ``app``'s sessions from this extension's store."""
        options = dict(self.options)
        lifetime = app.config.get("PERMANENT_SESSION_LIFETIME")
        default = flask.Flask.default_config["PERMANENT_SESSION_LIFETIME"]
        if "expire_minutes" not in options and lifetime not in (None, default):
            seconds = lifetime.total_seconds() if isinstance(lifetime, timedelta) else lifetime
            options["expire_minutes"] = float(seconds) / 60.0
        app.session_interface = PooledSessionInterface(Settings.load(**options), self.resolver)
        app.extensions[EXTENSION] = self
        self.app = app

    @property
    def service(self) -> SessionService:
        """The app's service (started now if it was not)."""
        return interface_of(self.app).service

    def shutdown(self) -> None:
        """Shut down the app's service (it also shuts down at interpreter exit)."""
        interface_of(self.app).shutdown()


class PooledSessionInterface(SessionInterface):
    """Flask's session interface over a `SessionService` created at first use, one per
    process (a service created before ``fork()`` starts afresh in the child by itself)."""

    def __init__(self, settings: Settings, resolver: ClientIPResolver) -> None:
        self.settings = settings
        self.resolver = resolver
        self._service: SessionService | None = None
        self._lock = threading.Lock()

    @property
    def service(self) -> SessionService:
        """The service, started at the first call."""
        service = self._service
        if service is None:
            with self._lock:
                if self._service is None:
                    self._service = SessionService(settings=self.settings)
                service = self._service
        return service

    def shutdown(self) -> None:
        """Shut the service down; a later request starts another."""
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.shutdown()

    def open_session(self, app: flask.Flask, request: flask.Request) -> FlaskSession:
        agent = request.headers.get("User-Agent")
        client = ClientInfo(self.resolver.from_wsgi(request.environ), agent)
        cookie = request.cookies.get(self.get_cookie_name(app))
        session = drive(self.service, opening(cookie, client, FlaskSession))
        session.client = client
        return session

    def save_session(
        self, app: flask.Flask, session: SessionMixin, response: flask.Response
    ) -> None:
        if not isinstance(session, FlaskSession):
            raise SessionError("the session was replaced by one pooled_sessions did not open")
        name = self.get_cookie_name(app)
        sent = flask.request.cookies.get(name)
        sid = drive(self.service, closing(session, session.client))
        refresh = bool(app.config.get("SESSION_REFRESH_EACH_REQUEST", True))
        update = cookie_update(self.settings, session, sent, sid, time.time(), refresh=refresh)
        if session.accessed or update is not None:
            response.vary.add("Cookie")
        if update is None:
            return
        attributes: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "httponly": self.get_cookie_httponly(app),
            "samesite": self.get_cookie_samesite(app) or "Lax",
        }
        if hasattr(self, "get_cookie_partitioned"):  # Flask 3.1 and later
            attributes["partitioned"] = self.get_cookie_partitioned(app)
        if update.value is None:
            response.delete_cookie(name, **attributes)
        else:
            response.set_cookie(name, update.value, max_age=update.max_age, **attributes)


def interface_of(app: flask.Flask) -> PooledSessionInterface:
    """``app``'s session interface, or a clear error when pooled_sessions does not serve it."""
    interface = app.session_interface
    if not isinstance(interface, PooledSessionInterface):
        raise SessionError("this Flask app's sessions are not pooled_sessions' (PooledSessions)")
    return interface


def _session() -> FlaskSession:
    session = flask.session
    if not isinstance(session, FlaskSession):
        raise SessionError("flask.session is not a pooled_sessions session (PooledSessions)")
    return session


def login(username: str) -> None:
    """Log ``username`` in on the current request's session: when the response is built
    the session gets a new id (never the one the client sent) with the user bound."""
    _session().login(username)


def logout() -> None:
    """End the current request's session everywhere when the response is built; it is
    empty from now on."""
    _session().logout()
