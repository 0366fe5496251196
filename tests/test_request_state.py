"""What a web request does with its session (`integrations.request_state`), on a real
service: the calls each outcome costs, and what the store holds after it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pooled_sessions import AsyncSessionService, SessionService
from pooled_sessions.config import Settings
from pooled_sessions.integrations.request_state import (
    RequestSession,
    adrive,
    changes,
    closing,
    drive,
    max_age,
    opening,
)


class Recorder:
    """A service that lists the methods called on it."""

    def __init__(self, service: Any) -> None:
        self.service, self.calls = service, list[str]()

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.service, name)


@pytest.fixture
def svc() -> Iterator[Recorder]:
    with SessionService("memory://") as service:
        yield Recorder(service)


def request(svc: Recorder, cookie: str | None, view: Any = None) -> tuple[str | None, list[str]]:
    """One request: open, run ``view`` on the session, close; the cookie and the calls."""
    svc.calls.clear()
    session = drive(svc, opening(cookie))
    if view is not None:
        view(session)
    return drive(svc, closing(session)), list(svc.calls)


def test_a_visitor_who_stores_nothing_gets_no_session(svc: Recorder) -> None:
    assert request(svc, None, lambda s: s.get("cart")) == (None, [])
    assert svc.service.stats()["live_sessions"] == 0


def test_storing_something_creates_an_anonymous_session(svc: Recorder) -> None:
    cookie, calls = request(svc, None, lambda s: s.update(cart=[3]))
    assert cookie is not None and calls == ["create_session"]
    session = svc.service.get_session(cookie)
    assert session.username is None and session.attributes == {"cart": [3]}


def test_a_request_that_changes_nothing_writes_nothing(svc: Recorder) -> None:
    cookie, _ = request(svc, None, lambda s: s.update(cart=[3], theme="dark"))
    assert request(svc, cookie, lambda s: s.update(cart=[3])) == (cookie, ["validate_session"])


def test_only_changed_keys_are_written_and_in_place_changes_count(svc: Recorder) -> None:
    cookie, _ = request(svc, None, lambda s: s.update(cart=[3], theme="dark", old=1))

    def view(session: RequestSession) -> None:
        session["cart"].append(7)
        del session["old"]

    calls: list[Any] = []
    real = svc.service.update_session

    def update(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    svc.service.update_session = update
    assert request(svc, cookie, view) == (cookie, ["validate_session", "update_session"])
    assert calls == [((cookie, {"cart": [3, 7]}), {"remove": {"old"}})]
    assert svc.service.get_session(cookie).attributes == {"cart": [3, 7], "theme": "dark"}


def test_an_unknown_or_ended_cookie_is_never_adopted(svc: Recorder) -> None:
    forged = "A" * 43
    cookie, calls = request(svc, forged, lambda s: s.update(cart=[1]))
    assert cookie not in (None, forged) and calls == ["validate_session", "create_session"]
    svc.service.end_session(cookie)
    again, _ = request(svc, cookie, lambda s: s.update(cart=[2]))
    assert again not in (None, cookie)


def test_login_rotates_binds_and_writes_the_delta_in_one_call(svc: Recorder) -> None:
    cookie, _ = request(svc, None, lambda s: s.update(cart=[3]))

    def view(session: RequestSession) -> None:
        session["greeting"] = "hi"
        session.login("alice")

    new, calls = request(svc, cookie, view)
    assert new not in (None, cookie) and calls == ["validate_session", "rotate_session"]
    session = svc.service.get_session(new)
    assert session.username == "alice"
    assert session.attributes == {"cart": [3], "greeting": "hi"}
    assert not svc.service.validate_session(cookie).valid


def test_login_of_a_new_visitor_creates_a_user_session(svc: Recorder) -> None:
    cookie, calls = request(svc, None, lambda s: s.login("bob"))
    assert cookie is not None and calls == ["create_session"]
    assert svc.service.sessions_of("bob") == [cookie]


def test_logout_ends_the_session_and_drops_the_cookie(svc: Recorder) -> None:
    cookie, _ = request(svc, None, lambda s: s.login("carol"))
    assert request(svc, cookie, RequestSession.logout) == (
        None,
        ["validate_session", "end_session"],
    )
    assert svc.service.sessions_of("carol") == []


def test_a_session_ended_elsewhere_during_the_request_is_not_recreated(svc: Recorder) -> None:
    cookie, _ = request(svc, None, lambda s: s.login("dave"))

    def view(session: RequestSession) -> None:
        svc.service.end_session(cookie)  # a logout everywhere, from another worker
        session["cart"] = [1]

    assert request(svc, cookie, view)[0] is None
    assert svc.service.sessions_of("dave") == []


def test_changes_compares_encoded_values() -> None:
    assert changes({"a": "1", "b": '"x"'}, {"a": 1, "c": [1]}) == ({"c": [1]}, {"b"})


def test_max_age_is_whole_seconds_cut_at_the_absolute_expiry() -> None:
    settings = Settings(expire_minutes=30)
    assert max_age(settings, None, 0.0) == 1800
    assert max_age(settings, 100.5, 0.0) == 100
    assert max_age(settings, 10.0, 20.0) == 0
    assert max_age(Settings(expire_minutes=30, absolute_lifetime_minutes=10), None, 0.0) == 600
    assert isinstance(max_age(Settings(expire_minutes=0.51), None, 0.0), int)


def test_the_asyncio_driver_runs_the_same_flows() -> None:
    async def main() -> None:
        async with AsyncSessionService("memory://") as service:
            session = await adrive(service, opening(None))
            session.login("erin")
            cookie = await adrive(service, closing(session))
            assert cookie is not None
            again = await adrive(service, opening(cookie))
            assert again.session_id == cookie and again.username == "erin"

    asyncio.run(main())
