"""What is Flask's own in the Flask integration: its ``SESSION_COOKIE_*`` settings and
``PERMANENT_SESSION_LIFETIME``, ``init_app``, the helpers outside a pooled_sessions app,
the client's address and agent, and the error when Flask is missing.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import flask
import pytest

from pooled_sessions.client_ip import ClientIPResolver
from pooled_sessions.errors import SessionError
from pooled_sessions.integrations.flask import PooledSessions, interface_of, login, logout
from tests import webapps
from tests.webkit import import_error


def test_flasks_cookie_settings_are_honoured(tmp_path: Path) -> None:
    config = {
        "SESSION_COOKIE_NAME": "sid",
        "SESSION_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Strict",
        "SESSION_COOKIE_DOMAIN": "shop.example",
        "SESSION_COOKIE_PATH": "/app",
    }
    app = webapps.flask_app(str(tmp_path / "s.json"), config=config)
    header = app.test_client().post("/login/alice").headers["Set-Cookie"]
    assert header.startswith("sid=")
    for part in ("Secure", "HttpOnly", "SameSite=Strict", "Domain=shop.example", "Path=/app"):
        assert part in header.split("; "), header
    app.extensions["pooled_sessions"].shutdown()


@pytest.mark.parametrize(
    ("lifetime", "settings", "max_age"),
    [
        (None, {}, "1800"),  # Flask's default lifetime (31 days) is not taken: 30 minutes
        (timedelta(minutes=10), {}, "600"),
        (900, {}, "900"),
        (timedelta(minutes=10), {"expire_minutes": 2}, "120"),  # the keyword wins
    ],
)
def test_permanent_session_lifetime_is_the_idle_expiry_when_the_app_sets_it(
    tmp_path: Path, lifetime: object, settings: dict[str, float], max_age: str
) -> None:
    config = {} if lifetime is None else {"PERMANENT_SESSION_LIFETIME": lifetime}
    app = webapps.flask_app(str(tmp_path / "s.json"), config=config, **settings)
    header = app.test_client().post("/login/alice").headers["Set-Cookie"]
    assert f"Max-Age={max_age}" in header.split("; "), header
    app.extensions["pooled_sessions"].shutdown()


def test_refresh_each_request_off_sets_the_cookie_only_when_the_id_changes(
    tmp_path: Path,
) -> None:
    app = webapps.flask_app(
        str(tmp_path / "s.json"), config={"SESSION_REFRESH_EACH_REQUEST": False}
    )
    client = app.test_client()
    assert "Set-Cookie" in client.post("/login/alice").headers
    reply = client.get("/")
    assert reply.get_json()["user"] == "alice" and "Set-Cookie" not in reply.headers
    assert reply.headers["Vary"] == "Cookie"
    refreshing = webapps.flask_app(str(tmp_path / "t.json"))
    client = refreshing.test_client()
    client.post("/login/alice")
    assert "Max-Age=1800" in client.get("/").headers["Set-Cookie"], "the expiry slid"
    for each in (app, refreshing):
        each.extensions["pooled_sessions"].shutdown()


def test_init_app_and_the_service_is_one_per_app(tmp_path: Path) -> None:
    extension = PooledSessions(backend=str(tmp_path / "s.json"), expire_minutes=5)
    app = flask.Flask(__name__)
    extension.init_app(app)

    @app.post("/in")
    def sign_in() -> str:
        login("dave")
        return "in"

    @app.post("/out")
    def sign_out() -> str:
        logout()
        return "out"

    client = app.test_client()
    assert "Max-Age=300" in client.post("/in").headers["Set-Cookie"]
    assert extension.service is interface_of(app).service
    assert extension.service.sessions_of("dave")
    assert "Max-Age=0" in client.post("/out").headers["Set-Cookie"]
    assert extension.service.sessions_of("dave") == []
    extension.shutdown()


def test_the_helpers_refuse_an_app_pooled_sessions_does_not_serve() -> None:
    app = flask.Flask(__name__)
    app.secret_key = "x"
    with app.test_request_context("/"):
        with pytest.raises(SessionError, match="PooledSessions"):
            login("eve")
        with pytest.raises(SessionError, match="PooledSessions"):
            logout()
    with pytest.raises(SessionError, match="PooledSessions"):
        interface_of(app)


def test_the_client_address_and_agent_are_stored_with_the_session(tmp_path: Path) -> None:
    app = webapps.flask_app(str(tmp_path / "s.json"), client_ip=ClientIPResolver(["10.0.0.0/8"]))
    response = app.test_client().post(
        "/login/frank",
        headers={"User-Agent": "Firefox/128.0", "X-Forwarded-For": "198.51.100.4"},
        environ_base={"REMOTE_ADDR": "10.0.0.7"},
    )
    service = app.extensions["pooled_sessions"].service
    [sid] = service.sessions_of("frank")
    session = service.get_session(sid)
    assert session is not None and "Set-Cookie" in response.headers
    assert (session.ip, session.user_agent) == ("198.51.100.4", "Firefox/128.0")
    app.extensions["pooled_sessions"].shutdown()


def test_without_flask_the_import_names_the_extra_to_install() -> None:
    error = import_error("pooled_sessions.integrations.flask", "flask")
    assert error.startswith("MissingDependencyError")
    assert 'pip install "pooled-sessions[flask]"' in error
