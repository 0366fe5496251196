"""Django's ``SESSION_ENGINE`` on pooled_sessions, through Django's test ``Client`` and its
real auth app (SQLite in a temporary folder), on the JSON file and on a real redis-server.

The views are those of the example shop (examples/django_app); a second `SessionService`
on the same store plays another app server.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client, override_settings

from pooled_sessions import SessionService
from pooled_sessions.errors import ConfigError, MissingDependencyError
from pooled_sessions.integrations import django as engine
from tests.redis_servers import RedisServer, commands_called

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django_app"
PASSWORD = "correct horse"
COOKIE = "sessionid"
FORGED = "forged0123456789abcdefghijklmnopqrstuvwxyzABC"
REDIS_WRITES = {"evalsha", "eval", "fcall", "hset", "set", "del", "unlink", "expire", "publish"}


@pytest.fixture(scope="module")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Django set up once for this process, with alice and bob in its database; their ids."""
    if not settings.configured:
        sys.path.insert(0, str(EXAMPLE))
        settings.configure(
            SECRET_KEY="tests",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
            ],
            ROOT_URLCONF="shop.urls",
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
                }
            },
            USE_TZ=True,
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            SESSION_ENGINE="pooled_sessions.integrations.django",
        )
        django.setup()
        call_command("migrate", verbosity=0)
    from django.contrib.auth.models import User  # once the apps are ready

    users = {name: User.objects.get_or_create(username=name)[0] for name in ("alice", "bob")}
    for user in users.values():
        user.set_password(PASSWORD)
        user.save()
    return {name: user.pk for name, user in users.items()}


@dataclass
class Site:
    """The example shop on one store: its test client, this process's service, the store."""

    url: str
    users: dict[str, int]
    redis: RedisServer | None

    @property
    def service(self) -> SessionService:
        return engine.get_service()

    def peer(self) -> SessionService:
        """Another app server on the same store, opened now."""
        return SessionService(self.url)

    def visit(self, cookie: str) -> Any:
        """What a new client sending ``cookie`` is shown."""
        client = Client()
        client.cookies[COOKIE] = cookie
        return client.get("/").json()

    def login(self, client: Client, name: str) -> Any:
        return client.post("/login", {"username": name, "password": PASSWORD})


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def site(
    request: pytest.FixtureRequest, tmp_path: Path, django_project: dict[str, int]
) -> Iterator[Site]:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    url = str(tmp_path / "sessions.json") if redis is None else request.getfixturevalue("redis_url")
    with override_settings(POOLED_SESSIONS={"backend": url}):  # its end closes the service
        yield Site(url, django_project, redis)


def cookie_of(response: Any) -> str | None:
    """The session id a response sets ("" when it deletes the cookie), None if it says nothing."""
    morsel = response.cookies.get(COOKIE)
    return None if morsel is None else str(morsel.value)


def test_a_visitor_who_stores_nothing_gets_no_cookie_and_no_session(site: Site) -> None:
    client = Client()
    for _ in range(3):
        response = client.get("/")
        assert response.json()["user"] is None
        assert cookie_of(response) is None
    stats = site.service.stats()
    assert (stats["live_sessions"], stats["store_writes"]) == (0, 0)


def test_login_rotates_the_key_and_binds_the_user_in_one_commit(site: Site) -> None:
    client = Client()
    anonymous = cookie_of(client.post("/cart", {"item": "apple"}))
    assert anonymous
    writes = site.service.stats()["store_writes"]
    response = site.login(client, "alice")
    signed_in = cookie_of(response)
    assert signed_in and signed_in != anonymous
    assert response.json() == {"pid": response.json()["pid"], "user": "alice", "cart": ["apple"]}
    assert site.service.stats()["store_writes"] == writes + 1
    with site.peer() as peer:
        assert peer.sessions_of(str(site.users["alice"])) == [signed_in]
        assert not peer.validate_session(anonymous).valid
    assert site.visit(anonymous)["user"] is None


def test_a_second_login_as_another_user_rotates_again(site: Site) -> None:
    client = Client()
    alice = cookie_of(site.login(client, "alice"))
    response = site.login(client, "bob")
    bob = cookie_of(response)
    assert response.json()["user"] == "bob" and bob and bob != alice
    assert site.service.sessions_of(str(site.users["alice"])) == []
    assert site.service.sessions_of(str(site.users["bob"])) == [bob]


def test_logout_ends_the_session_everywhere(site: Site) -> None:
    client = Client()
    signed_in = cookie_of(site.login(client, "alice"))
    assert signed_in
    response = client.post("/logout")
    assert cookie_of(response) == "" and response.json()["user"] is None
    with site.peer() as peer:
        assert not peer.validate_session(signed_in).valid
        assert peer.sessions_of(str(site.users["alice"])) == []
    assert site.visit(signed_in)["user"] is None


def test_logging_a_user_out_everywhere_ends_sessions_on_other_servers(site: Site) -> None:
    from pooled_sessions import SessionManager

    client = Client()
    assert site.login(client, "alice").json()["user"] == "alice"
    with site.peer() as peer:
        assert SessionManager(peer).logout(str(site.users["alice"])) == 1
    assert client.get("/").json()["user"] is None


def test_a_forged_key_is_never_adopted(site: Site) -> None:
    client = Client()
    client.cookies[COOKIE] = FORGED
    response = client.get("/")
    assert cookie_of(response) == ""  # Django deletes a cookie that names no session
    client.cookies[COOKIE] = FORGED
    created = cookie_of(client.post("/cart", {"item": "apple"}))
    assert created and created != FORGED
    assert not engine.SessionStore().exists(FORGED) and engine.SessionStore().exists(created)
    assert client.get("/").json()["cart"] == ["apple"]


def test_an_ended_session_is_never_adopted(site: Site) -> None:
    client = Client()
    first = cookie_of(client.post("/cart", {"item": "apple"}))
    assert first and site.service.end_session(first)
    second = cookie_of(client.post("/cart", {"item": "pear"}))
    assert second and second != first
    assert client.get("/").json()["cart"] == ["pear"]


def test_a_request_that_changes_nothing_writes_nothing(site: Site) -> None:
    client = Client()
    client.post("/cart", {"item": "apple"})
    writes = site.service.stats()["store_writes"]
    before = commands_called(site.redis) if site.redis else {}
    for _ in range(5):
        response = client.get("/")
        assert response.json()["cart"] == ["apple"]
        morsel = response.cookies[COOKIE]  # the cookie follows the sliding expiry
        assert morsel["max-age"] == 1800 and morsel["httponly"] and morsel["samesite"] == "Lax"
    assert site.service.stats()["store_writes"] == writes
    if site.redis is not None:
        after = commands_called(site.redis)
        assert {name for name in after if after[name] != before.get(name)} & REDIS_WRITES == set()


def test_a_value_changed_in_place_is_saved(site: Site) -> None:
    client = Client()
    client.post("/cart", {"item": "apple"})
    sid = cookie_of(client.post("/cart", {"item": "pear"}))  # cart.append: no modified flag
    assert sid
    with site.peer() as peer:
        session = peer.get_session(sid)
        assert session is not None and session.attributes["cart"] == ["apple", "pear"]


def test_the_test_clients_session_is_saved_explicitly(site: Site) -> None:
    client = Client()
    session = client.session
    session["cart"] = ["gift"]
    session.save()
    assert client.get("/").json()["cart"] == ["gift"]


def test_expiry_is_the_stores_sliding_expiry_in_whole_seconds(django_project: object) -> None:
    with override_settings(POOLED_SESSIONS={"backend": "memory://", "expire_minutes": 2.5}):
        store = engine.SessionStore()
        assert store.get_expiry_age() == 150 and isinstance(store.get_expiry_age(), int)
        assert store.get_session_cookie_age() == 150
        assert 149 <= (store.get_expiry_date() - django.utils.timezone.now()).total_seconds()
        store.set_expiry(0)
        assert store.get_expire_at_browser_close()
        store.set_expiry(None)
        with pytest.raises(ConfigError, match="set_expiry.*expire_minutes"):
            store.set_expiry(3600)
        engine.SessionStore.clear_expired()


def test_a_bad_setting_is_refused_by_name(django_project: object) -> None:
    with override_settings(POOLED_SESSIONS={"backend": "memory://", "expire_minuts": 5}):
        with pytest.raises(ConfigError, match="POOLED_SESSIONS: unknown setting.*expire_minuts"):
            engine.get_service()
    with override_settings(POOLED_SESSIONS="memory://"):
        with pytest.raises(ConfigError, match="POOLED_SESSIONS must be a dict"):
            engine.get_service()


@pytest.mark.parametrize(
    ("module", "hidden", "extra"),
    [("django", "django.conf", "django"), ("prometheus", "prometheus_client.core", "prometheus")],
)
def test_an_integration_without_its_package_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, hidden: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.delitem(sys.modules, f"pooled_sessions.integrations.{module}", raising=False)
    with pytest.raises(MissingDependencyError, match=rf'install "pooled-sessions\[{extra}\]"'):
        importlib.import_module(f"pooled_sessions.integrations.{module}")


async def test_async_login_and_logout_rotate_and_end_the_session(site: Site) -> None:
    from django.contrib.auth import alogin, alogout
    from django.contrib.auth.models import User
    from django.http import HttpRequest

    request = HttpRequest()
    request.session = engine.SessionStore()
    request.session["cart"] = ["apple"]
    await request.session.asave()
    anonymous = request.session.session_key
    await alogin(request, await User.objects.aget(username="alice"))
    await request.session.asave()
    signed_in = request.session.session_key
    assert signed_in and signed_in != anonymous
    assert site.service.sessions_of(str(site.users["alice"])) == [signed_in]
    await alogout(request)
    assert site.service.sessions_of(str(site.users["alice"])) == []
