"""Anonymous sessions (a visitor before login) and the login that binds one to a user, on
every backend: a second service on the same store stands for another worker process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pooled_sessions import SessionManager, SessionService
from pooled_sessions.errors import SessionDataError
from pooled_sessions.tools import cli
from tests.backends import ServiceFactory
from tests.redis_servers import RedisServer, unique_prefix


def test_anonymous_session_has_no_user_and_is_seen_by_a_peer(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc, peer = make_service(), make_peer()
    sid = svc.create_session(None, {"cart": [3, 7]})
    mine = svc.get_session(sid)
    assert mine is not None and mine.username is None
    seen = peer.validate_session(sid)
    assert seen.valid and seen.session is not None
    assert seen.session.username is None
    assert seen.session.attributes == {"cart": [3, 7]}


def test_anonymous_sessions_belong_to_no_user(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    svc.create_session(None, {"cart": [1]})
    alice = svc.create_session("alice")
    assert svc.sessions_of("alice") == [alice]
    assert make_peer().sessions_of("alice") == [alice]
    with pytest.raises(ValueError, match="username"):
        svc.sessions_of("")


def test_rotate_binds_a_user_and_applies_a_delta_in_one_step(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc, peer = make_service(), make_peer()
    anon = svc.create_session(None, {"cart": [3], "theme": "dark"})
    peer.validate_session(anon)  # the peer caches the anonymous session
    new = svc.rotate_session(anon, username="alice", attributes={"cart": [3, 7]}, remove=["theme"])
    assert new is not None and new != anon
    for service in (svc, peer):
        assert not service.validate_session(anon).valid
        session = service.get_session(new)
        assert session is not None
        assert session.username == "alice"
        assert session.attributes == {"cart": [3, 7]}
        assert service.sessions_of("alice") == [new]


def test_rotate_rebinds_another_users_session(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    bob = svc.create_session("bob", {"k": 1})
    new = svc.rotate_session(bob, username="alice")
    assert new is not None
    peer = make_peer()
    assert peer.sessions_of("bob") == []
    assert peer.sessions_of("alice") == [new]
    assert svc.rotate_session(bob, username="alice") is None  # the old id is gone


def test_rotate_without_changes_keeps_user_and_data(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session("carol", {"a": 1})
    new = svc.rotate_session(sid)
    session = svc.get_session(new or "")
    assert session is not None and session.username == "carol"
    assert session.attributes == {"a": 1}


@pytest.mark.backends("memory", "file", "redis")
def test_rotate_refuses_bad_data_and_changes_nothing(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session(None, {"a": 1})
    with pytest.raises(SessionDataError):
        svc.rotate_session(sid, username="dave", attributes={"bad": {1, 2}})
    with pytest.raises(ValueError, match="username"):
        svc.rotate_session(sid, username="")
    session = svc.get_session(sid)
    assert session is not None and session.username is None
    assert session.attributes == {"a": 1}


@pytest.mark.backends("memory", "file", "redis")
def test_manager_login_keeps_an_anonymous_cart(make_service: ServiceFactory) -> None:
    svc = make_service()
    assert isinstance(svc, SessionService)
    anon = svc.create_session(None, {"cart": [3, 7]})
    result = SessionManager(svc).login("erin", anon)
    assert result and result.rotated and result.session_id != anon
    session = svc.get_session(result.session_id or "")
    assert session is not None and session.username == "erin"
    assert session.attributes == {"cart": [3, 7]}
    assert not svc.validate_session(anon).valid


@pytest.mark.redis
@pytest.mark.parametrize("count", [1, 300], ids=["one", "bulk"])
def test_redis_keeps_no_user_index_for_anonymous_sessions(
    redis_server: RedisServer, count: int
) -> None:
    prefix = unique_prefix()
    url = f"{redis_server.url}?prefix={prefix}"
    with SessionService(url, write_behind=True, batch_save_threshold=1000) as svc:
        ids = [svc.create_session(None, {"n": n}) for n in range(count)]
        alice = svc.create_session("alice")
        svc.force_save()
        assert svc.end_session(ids[0])
        svc.force_save()
    user_keys = redis_server.cli("--scan", "--pattern", f"{prefix}:u:*").split()
    assert user_keys == [f"{prefix}:u:{{alice}}"]
    with SessionService(f"{redis_server.url}?prefix={prefix}") as peer:
        assert peer.sessions_of("alice") == [alice]
        assert all(peer.validate_session(sid).valid for sid in ids[1:])


@pytest.mark.redis
def test_migrate_and_inspect_keep_anonymous_sessions_apart(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sessions.json"
    with SessionService(path) as svc:
        anon = [svc.create_session(None, {"cart": [n]}) for n in range(2)]
        alice = svc.create_session("alice")
    assert cli.main(["inspect", str(path), "--json", "--quiet"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["live"], found["users"], found["anonymous"]) == (3, 1, 2)
    target = f"{redis_server.url}?prefix={unique_prefix()}"
    assert cli.main(["migrate", str(path), target, "--verify", "--quiet"]) == 0
    with SessionService(target) as peer:
        assert peer.sessions_of("alice") == [alice]
        for n, sid in enumerate(anon):
            session = peer.get_session(sid)
            assert session is not None and session.username is None
            assert session.attributes == {"cart": [n]}
