"""SessionManager: logins from another place, the three policies, limits, rotation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pooled_sessions import SessionPoolConfig, SessionService
from pooled_sessions.engine.logins import (
    LiveLogin,
    LocationEvent,
    LocationPolicy,
    LoginPolicy,
    decide_login,
)
from pooled_sessions.errors import ConfigError
from pooled_sessions.manager import AsyncSessionManager, LoginResult, SessionManager
from tests.backends import ServiceFactory

HOME, CAFE, HOME_V6 = "203.0.113.7", "198.51.100.20", "2001:db8:1:2::7"


def live(*spec: tuple[str, str | None, float]) -> list[LiveLogin]:
    return [LiveLogin(sid, ip, created) for sid, ip, created in spec]


# -- the pure decision -------------------------------------------------------------------


def test_first_login_needs_nothing() -> None:
    decision = decide_login([], HOME, LoginPolicy())
    assert decision.allowed and decision.end == () and decision.elsewhere == ()


def test_end_older_ends_only_the_sessions_from_elsewhere() -> None:
    sessions = live(("a", HOME, 1.0), ("b", CAFE, 2.0), ("c", None, 3.0))
    decision = decide_login(sessions, HOME, LoginPolicy())
    assert decision.allowed and decision.end == ("b",)
    assert [s.session_id for s in decision.elsewhere] == ["b"]


def test_allow_keeps_everything_and_reports() -> None:
    decision = decide_login(
        live(("b", CAFE, 2.0)), HOME, LoginPolicy(on_new_location=LocationPolicy.ALLOW)
    )
    assert decision.allowed and decision.end == () and len(decision.elsewhere) == 1


def test_refuse_refuses_a_login_from_elsewhere_only() -> None:
    policy = LoginPolicy(on_new_location="refuse")  # type: ignore[arg-type]
    assert not decide_login(live(("b", CAFE, 2.0)), HOME, policy).allowed
    assert decide_login(live(("b", CAFE, 2.0)), HOME, policy).reason == "other_location"
    assert decide_login(live(("a", HOME, 1.0)), HOME, policy).allowed


@pytest.mark.parametrize(
    ("old", "new", "v4", "v6", "same"),
    [
        (HOME, HOME, 32, 128, True),
        (HOME, "203.0.113.99", 32, 128, False),
        (HOME, "203.0.113.99", 24, 128, True),
        (HOME, "203.0.114.7", 24, 128, False),
        (HOME, "203.0.114.7", 16, 128, True),
        (HOME_V6, "2001:db8:1:2::99", 32, 128, False),
        (HOME_V6, "2001:db8:1:2::99", 32, 64, True),
        (HOME_V6, "2001:db8:1:3::7", 32, 64, False),
        (HOME, f"::ffff:{HOME}", 32, 128, True),
        (HOME, HOME_V6, 0, 0, False),  # different families are never one place
        (None, HOME, 32, 128, True),  # unknown address: no evidence of elsewhere
        (HOME, None, 32, 128, True),
    ],
)
def test_same_place(old: str | None, new: str | None, v4: int, v6: int, same: bool) -> None:
    assert LoginPolicy(ipv4_prefix=v4, ipv6_prefix=v6).same_place(old, new) is same


def test_per_user_limit_ends_the_oldest_or_refuses() -> None:
    sessions = live(("a", HOME, 1.0), ("b", HOME, 2.0), ("c", HOME, 3.0))
    decision = decide_login(sessions, HOME, LoginPolicy(max_sessions_per_user=2))
    assert decision.allowed and decision.end == ("a", "b")
    refused = decide_login(sessions, HOME, LoginPolicy(max_sessions_per_user=3, on_limit="refuse"))
    assert not refused.allowed and refused.reason == "too_many_sessions"
    room = decide_login(sessions, HOME, LoginPolicy(max_sessions_per_user=4, on_limit="refuse"))
    assert room.allowed and room.end == ()


def test_sessions_ended_for_elsewhere_count_towards_the_limit() -> None:
    sessions = live(("a", CAFE, 1.0), ("b", HOME, 2.0))
    decision = decide_login(sessions, HOME, LoginPolicy(max_sessions_per_user=2))
    assert decision.end == ("a",)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_new_location": "logout"}, "on_new_location must be one of"),
        ({"ipv4_prefix": 33}, "ipv4_prefix"),
        ({"ipv6_prefix": -1}, "ipv6_prefix"),
        ({"ipv4_prefix": True}, "ipv4_prefix"),
        ({"max_sessions_per_user": 0}, "max_sessions_per_user"),
        ({"on_limit": "drop"}, "on_limit"),
    ],
)
def test_bad_policy_is_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoginPolicy(**options)


# -- the manager on a real service -------------------------------------------------------


@pytest.fixture
def service() -> Iterator[SessionService]:
    with SessionService("memory://") as svc:
        yield svc


class Recorder:
    def __init__(self) -> None:
        self.events: list[LocationEvent] = []

    def __call__(self, event: LocationEvent) -> None:
        self.events.append(event)


def logged_in(
    manager: SessionManager, user: str, ip: str | None, session_id: str | None = None
) -> str:
    """Log ``user`` in and return the id the client must use now."""
    result = manager.login(user, session_id, ip)
    assert result and result.session_id is not None, result
    return result.session_id


def test_login_and_check(make_service: ServiceFactory) -> None:
    manager = SessionManager(make_service())
    sid = logged_in(manager, "alice", HOME)
    assert manager.is_valid_session("alice", sid)
    assert not manager.is_valid_session("mallory", sid)
    assert not manager.is_valid_session("alice", "sid-unknown")
    assert not manager.is_valid_session("alice", "../../etc/passwd")
    assert not manager.is_valid_session("alice", "")
    with pytest.raises(ValueError, match="session_id"):
        manager.login("alice", "bad id!", HOME)
    with pytest.raises(ValueError, match="not an IP address"):
        manager.login("alice", "sid-alice-2", "203.0.113.999")
    with pytest.raises(TypeError):
        manager.is_valid_session("alice", 42)  # type: ignore[arg-type]


def test_a_forged_id_never_becomes_authenticated(make_service: ServiceFactory) -> None:
    service = make_service()
    manager = SessionManager(service)
    forged = "attacker-planted-this-id-in-the-victims-cookie"
    result = manager.login("alice", forged, HOME)
    assert isinstance(result, LoginResult) and result and result.reason == "ok"
    assert result.session_id not in (None, forged) and not result.rotated
    assert not manager.is_valid_session("alice", forged)
    assert manager.is_valid_session("alice", result.session_id or "")
    assert service.get_session(forged) is None
    assert service.sessions_of("alice") == [result.session_id]


def test_an_ended_id_is_not_revived_by_a_login(service: SessionService) -> None:
    manager = SessionManager(service)
    old = logged_in(manager, "alice", HOME)
    assert manager.logout("alice") == 1
    new = logged_in(manager, "alice", HOME, old)
    assert new != old and not manager.is_valid_session("alice", old)
    assert manager.is_valid_session("alice", new)


def test_a_login_without_a_session_gets_a_fresh_one(service: SessionService) -> None:
    manager = SessionManager(service)
    first, second = logged_in(manager, "alice", HOME), logged_in(manager, "alice", HOME)
    assert first != second and service.sessions_of("alice") == [first, second]


def test_the_login_result_is_truthy_only_when_logged_in(service: SessionService) -> None:
    manager = SessionManager(service, "refuse")
    assert bool(manager.login("alice", None, HOME)) is True
    refused = manager.login("alice", None, CAFE)
    assert bool(refused) is False and refused.session_id is None
    assert refused.reason == "other_location"


def test_default_policy_ends_the_older_session_and_tells(make_service: ServiceFactory) -> None:
    told = Recorder()
    manager = SessionManager(make_service(), on_location_change=told)
    home = logged_in(manager, "alice", HOME)
    cafe = logged_in(manager, "alice", CAFE)
    assert not manager.is_valid_session("alice", home)
    assert manager.is_valid_session("alice", cafe)
    assert len(told.events) == 1
    event = told.events[0]
    assert (event.username, event.new_ip, event.old_ips, event.action) == (
        "alice",
        CAFE,
        (HOME,),
        "ended",
    )
    assert event.session_ids == (home,)


def test_a_second_login_from_the_same_place_keeps_both(service: SessionService) -> None:
    told = Recorder()
    manager = SessionManager(service, on_location_change=told)
    first, second = logged_in(manager, "alice", HOME), logged_in(manager, "alice", HOME)
    assert manager.is_valid_session("alice", first) and manager.is_valid_session("alice", second)
    assert told.events == []


def test_same_network_by_prefix(service: SessionService) -> None:
    told = Recorder()
    manager = SessionManager(service, ipv4_prefix=24, on_location_change=told)
    first = logged_in(manager, "alice", "203.0.113.7")
    logged_in(manager, "alice", "203.0.113.200")
    assert told.events == [] and manager.is_valid_session("alice", first)
    logged_in(manager, "alice", "203.0.114.1")
    assert told.events[0].old_ips == ("203.0.113.7", "203.0.113.200")


def test_allow_and_report(service: SessionService) -> None:
    told = Recorder()
    manager = SessionManager(service, "allow", on_location_change=told)
    home = logged_in(manager, "alice", HOME)
    result = manager.sign_in("alice", None, CAFE)
    assert result and result.ended == () and result.event is not None
    assert manager.is_valid_session("alice", home)
    assert manager.is_valid_session("alice", result.session_id or "")
    assert told.events[0].action == "allowed"


def test_refuse_the_new_login(service: SessionService) -> None:
    told = Recorder()
    manager = SessionManager(
        service, LoginPolicy(on_new_location=LocationPolicy.REFUSE), on_location_change=told
    )
    home = logged_in(manager, "alice", HOME)
    result = manager.sign_in("alice", "sid-cafe", CAFE)
    assert not result and result.reason == "other_location" and result.session_id is None
    assert manager.is_valid_session("alice", home)
    assert not manager.is_valid_session("alice", "sid-cafe")
    assert service.sessions_of("alice") == [home]
    assert told.events[0].action == "refused"
    assert manager.login("alice", None, HOME)  # the same place is still fine


def test_max_sessions_per_user(service: SessionService) -> None:
    manager = SessionManager(service, max_sessions_per_user=2)
    ids = [logged_in(manager, "alice", HOME) for _ in range(3)]
    assert service.sessions_of("alice") == ids[1:]
    strict = SessionManager(service, max_sessions_per_user=2, on_limit="refuse")
    result = strict.sign_in("alice", None, HOME)
    assert not result and result.reason == "too_many_sessions"
    assert service.sessions_of("alice") == ids[1:]


def test_login_is_false_when_the_pool_is_exhausted() -> None:
    with SessionService("memory://", pool=SessionPoolConfig(max_total=1, max_wait=0)) as svc:
        manager = SessionManager(svc)
        assert manager.login("alice", None, HOME)
        refused = manager.login("bob", None, CAFE)
        assert not refused and refused.reason == "pool_exhausted" and refused.session_id is None
        assert manager.logout("alice") == 1
        assert manager.login("bob", None, CAFE)


def test_logout_ends_every_session_of_the_user(service: SessionService) -> None:
    manager = SessionManager(service, "allow")
    ids = [logged_in(manager, "alice", ip) for ip in (HOME, CAFE, HOME_V6)]
    bob = logged_in(manager, "bob", HOME)
    assert manager.logout("alice") == 3
    assert not any(manager.is_valid_session("alice", sid) for sid in ids)
    assert manager.is_valid_session("bob", bob)
    assert manager.logout("alice") == 0


def test_a_login_that_keeps_data_rotates_the_id(service: SessionService) -> None:
    manager = SessionManager(service)
    service.create_session("alice", {"cart": [3, 7]}, session_id="sid-before-login")
    result = manager.login("alice", "sid-before-login", HOME)
    assert result and result.rotated and result.session_id != "sid-before-login"
    assert result.session_id is not None
    session = service.get_session(result.session_id)
    assert session is not None and session.attributes == {"cart": [3, 7]}
    assert not manager.is_valid_session("alice", "sid-before-login")
    assert manager.is_valid_session("alice", result.session_id)
    again = manager.login("alice", "sid-before-login", HOME)  # the old id again: a fresh one
    assert again and not again.rotated and again.session_id not in ("sid-before-login", None)
    assert service.get_session("sid-before-login") is None


class Recording:
    """A service that records the keyword arguments of each ``create_session``."""

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.created: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    def create_session(self, *args: Any, **kwargs: Any) -> str:
        self.created.append(kwargs)
        return self.service.create_session(*args, **kwargs)


def test_the_caller_id_is_never_handed_to_create_session(service: SessionService) -> None:
    recording = Recording(service)
    manager = SessionManager(recording)
    for given in ("sid-x", None):
        assert manager.login("alice", given, HOME)
    assert recording.created == [{}, {}], "an id was chosen for the library"


def test_another_users_session_is_never_inherited(service: SessionService) -> None:
    manager = SessionManager(service)
    service.create_session("mallory", {"secret": 1}, session_id="sid-planted")
    result = manager.sign_in("alice", "sid-planted", HOME, attributes={"fresh": True})
    assert result and result.session_id not in (None, "sid-planted") and not result.rotated
    assert result.session_id is not None
    session = service.get_session(result.session_id)
    assert session is not None and session.username == "alice"
    assert session.attributes == {"fresh": True}
    assert service.get_session("sid-planted") is None


def test_a_failing_listener_does_not_undo_the_login(
    service: SessionService, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(event: LocationEvent) -> None:
        raise RuntimeError("listener bug")

    manager = SessionManager(service, on_location_change=explode)
    home = logged_in(manager, "alice", HOME)
    with caplog.at_level(logging.WARNING, logger="session_service"):
        cafe = logged_in(manager, "alice", CAFE)
    assert manager.is_valid_session("alice", cafe)
    assert "listener failed" in caplog.text and "while active from 203.0.113.7" in caplog.text
    assert home not in caplog.text and cafe not in caplog.text


def test_manager_options_are_checked(service: SessionService) -> None:
    with pytest.raises(ConfigError, match="unknown SessionManager option"):
        SessionManager(service, max_session=3)
    with pytest.raises(ConfigError, match="not both"):
        SessionManager(service, LoginPolicy(), ipv4_prefix=24)
    with pytest.raises(ConfigError, match="callable"):
        SessionManager(service, on_location_change="print")  # type: ignore[arg-type]


def test_concurrent_logins_of_one_user_respect_the_limit(service: SessionService) -> None:
    manager = SessionManager(service, "allow", max_sessions_per_user=1)
    threads = [
        threading.Thread(target=manager.login, args=("alice", f"sid-{n}", f"192.0.2.{n + 1}"))
        for n in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(service.sessions_of("alice")) == 1


class AsyncFacade:
    """The calls the managers make, as coroutines over a sync service (no cross-server hold)."""

    CALLS = frozenset(
        {
            "get_session",
            "sessions_of",
            "end_session",
            "rotate_session",
            "create_session",
            "validate_session",
        }
    )

    def __init__(self, service: SessionService) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        if name not in self.CALLS:
            raise AttributeError(name)
        method = getattr(self._service, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


async def test_async_manager_runs_the_same_operations(service: SessionService) -> None:
    told: list[LocationEvent] = []

    async def listener(event: LocationEvent) -> None:
        told.append(event)

    manager = AsyncSessionManager(AsyncFacade(service), on_location_change=listener)
    home = (await manager.login("alice", None, HOME)).session_id or ""
    cafe = (await manager.login("alice", None, CAFE)).session_id or ""
    assert not await manager.is_valid_session("alice", home)
    assert await manager.is_valid_session("alice", cafe, CAFE)
    assert told and told[0].action == "ended"
    assert await manager.logout("alice") == 1


async def test_async_manager_pool_exhausted() -> None:
    with SessionService("memory://", pool=SessionPoolConfig(max_total=1, max_wait=0)) as svc:
        manager = AsyncSessionManager(AsyncFacade(svc))
        assert await manager.login("alice", None, HOME)
        refused = await manager.login("bob", None, HOME)
        assert not refused and refused.reason == "pool_exhausted"


async def test_async_manager_on_the_async_service() -> None:
    from pooled_sessions import AsyncSessionService

    async with AsyncSessionService(
        "memory://", pool=SessionPoolConfig(max_total=2, max_wait=0)
    ) as svc:
        manager = AsyncSessionManager(svc, max_sessions_per_user=1)
        first = await manager.login("alice", None, HOME)
        assert first and await manager.login("alice", None, HOME)  # the limit ends the first
        assert not await manager.is_valid_session("alice", first.session_id or "")
        assert await manager.login("bob", None, CAFE)
        assert not await manager.login("carol", None, CAFE)  # pool full
        assert await manager.logout("alice") == 1
        assert await manager.login("carol", None, CAFE)


async def test_async_manager_never_adopts_a_forged_id() -> None:
    from pooled_sessions import AsyncSessionService

    async with AsyncSessionService("memory://") as svc:
        manager = AsyncSessionManager(svc)
        forged = "attacker-planted-this-id"
        result = await manager.login("alice", forged, HOME)
        assert isinstance(result, LoginResult) and result
        assert result.session_id not in (None, forged)
        assert not await manager.is_valid_session("alice", forged)
        assert await manager.is_valid_session("alice", result.session_id or "")
        kept = await svc.create_session("alice", {"cart": [1]})
        rotated = await manager.login("alice", kept, HOME)
        assert rotated.rotated and rotated.session_id not in (None, kept)
        assert not await manager.is_valid_session("alice", kept)
        session = await svc.get_session(rotated.session_id or "")
        assert session is not None and session.attributes == {"cart": [1]}
