"""Session data a store could not write, or would give back changed, is refused at the call.

Each test runs on every backend (tests/backends.py): the bad call raises, nothing is
queued, and the sessions created after it are written and survive a reopen of the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from pooled_sessions import Reason, SessionDataError
from pooled_sessions.storable import MAX_NESTING
from tests.backends import ServiceAPI, ServiceFactory
from tests.redis_servers import RedisServer

SURROGATE = json.loads('"\\ud800"')  # what a JSON parser gives for a lone escape
LONE_LOW = "\udc80"  # what os.fsdecode gives for an undecodable byte
Sessions = dict[str, tuple[str, dict[str, Any]]]
"""Sessions a store must give back: id -> (username, attributes)."""


def nested(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` alternating lists and objects."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def assert_written_and_reopened(
    svc: ServiceAPI, make_peer: ServiceFactory, expected: Sessions
) -> None:
    """Every session in ``expected`` (id -> user, attributes) is saved, and a new service on
    the same store reads it back unchanged."""
    svc.force_save()
    stats = svc.stats()
    assert stats["flush_failures"] == 0, stats["last_error"]
    assert stats["pending_changes"] == 0
    report = svc.shutdown()
    assert report.complete, report
    reopened = make_peer()
    for sid, (user, attributes) in expected.items():
        session = reopened.get_session(sid)
        assert session is not None, f"{user}'s session was lost"
        assert session.username == user
        assert session.attributes == attributes


POISON_ATTRIBUTES: list[tuple[dict[Any, Any], str]] = [
    ({"name": SURROGATE}, r"attribute 'name' holds a lone surrogate"),
    ({"name": "ok" + LONE_LOW + "ok"}, r"attribute 'name' holds a lone surrogate"),
    ({"bad" + SURROGATE: 1}, r"attribute name 'bad\\ud800' holds a lone surrogate"),
    ({"deep": {"a": [1, {"b": SURROGATE}]}}, r"attribute 'deep' at \['a'\]\[1\]\['b'\]"),
    ({"deep": [{"k" + LONE_LOW: 1}]}, r"attribute 'deep' at \[0\]\['k\\udc80'\]"),
]


@pytest.mark.parametrize(("attributes", "message"), POISON_ATTRIBUTES)
def test_a_lone_surrogate_is_refused_at_the_call_and_later_saves_succeed(
    make_service: ServiceFactory,
    make_peer: ServiceFactory,
    attributes: dict[Any, Any],
    message: str,
) -> None:
    svc = make_service()
    earlier = svc.create_session("alice", {"cart": [3, 7]})
    svc.force_save()
    with pytest.raises(SessionDataError, match=message):
        svc.create_session("mallory", attributes)
    with pytest.raises(SessionDataError, match=message):
        svc.update_session(earlier, attributes)
    assert svc.stats()["pending_changes"] == 0, "nothing was queued"
    later = svc.create_session("bob", {"name": "Zoë ☃ 😀"})
    assert svc.update_session(earlier, {"seen": True})
    expected: Sessions = {
        earlier: ("alice", {"cart": [3, 7], "seen": True}),
        later: ("bob", {"name": "Zoë ☃ 😀"}),
    }
    assert_written_and_reopened(svc, make_peer, expected)


@pytest.mark.parametrize(
    ("client_info", "field"),
    [
        ({"user_agent": "Mozilla/5.0 " + SURROGATE}, "client user_agent"),
        ({"ip": "fe80::1%" + LONE_LOW}, "client ip"),  # an IPv6 scope id may hold any text
        ({"ip": "203.0.113.7", "user_agent": LONE_LOW}, "client user_agent"),
    ],
)
def test_a_client_string_with_a_lone_surrogate_is_refused_not_mangled(
    make_service: ServiceFactory,
    make_peer: ServiceFactory,
    client_info: dict[str, str],
    field: str,
) -> None:
    svc = make_service()
    earlier = svc.create_session("alice", client_info={"ip": "203.0.113.7", "user_agent": "A"})
    with pytest.raises(SessionDataError, match=f"{field} .* lone surrogate"):
        svc.create_session("mallory", {}, client_info)
    with pytest.raises(SessionDataError, match=field):
        svc.validate_session(earlier, client_info)
    assert svc.sessions_of("mallory") == []
    later = svc.create_session("bob", client_info={"ip": "fe80::1%eth0", "user_agent": "Zoë"})
    expected: Sessions = {earlier: ("alice", {}), later: ("bob", {})}
    assert_written_and_reopened(svc, make_peer, expected)
    session = make_peer().get_session(later)
    assert session is not None
    assert (session.ip, session.user_agent) == ("fe80::1%eth0", "Zoë")


def test_a_username_with_a_lone_surrogate_is_refused_at_every_call_that_takes_one(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    for name in ("al" + SURROGATE + "ice", LONE_LOW):
        with pytest.raises(SessionDataError, match="username .* lone surrogate"):
            svc.create_session(name, {"a": 1})
        with pytest.raises(SessionDataError, match="username"):
            svc.sessions_of(name)
    later = svc.create_session("zoë ☃", {"a": 1})
    assert_written_and_reopened(svc, make_peer, {later: ("zoë ☃", {"a": 1})})


def test_nesting_to_the_limit_is_stored_and_deeper_is_refused_without_recursion_error(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    deepest = nested(MAX_NESTING, "leaf")
    sid = svc.create_session("alice", {"deep": deepest})
    cycle: list[Any] = []
    cycle.append(cycle)
    for too_deep in (nested(MAX_NESTING + 1), nested(990), nested(100_000), cycle):
        with pytest.raises(SessionDataError, match=f"deeper than {MAX_NESTING} levels"):
            svc.create_session("mallory", {"deep": too_deep})
        with pytest.raises(SessionDataError, match=f"deeper than {MAX_NESTING} levels"):
            svc.update_session(sid, {"deeper": [too_deep]})
    later = svc.create_session("bob", {"also": nested(MAX_NESTING)})
    expected: Sessions = {
        sid: ("alice", {"deep": deepest}),
        later: ("bob", {"also": nested(MAX_NESTING)}),
    }
    assert_written_and_reopened(svc, make_peer, expected)


CHANGED_BY_JSON: list[tuple[dict[str, Any], str]] = [
    ({"map": {1: "a"}}, r"attribute 'map' has the key 1: keys of objects must be str"),
    ({"map": {True: "a"}}, r"has the key True"),
    ({"map": {None: 1}}, r"has the key None"),
    ({"map": {"ok": {2.5: 1}}}, r"attribute 'map' at \['ok'\] has the key 2.5"),
    ({"rows": [[1], [{"x": {7: 0}}]]}, r"attribute 'rows' at \[1\]\[0\]\['x'\] has the key 7"),
    ({"pair": (1, 2)}, r"attribute 'pair' is a tuple: JSON would give it back as a list"),
    ({"rows": [1, [2, (3,)]]}, r"attribute 'rows' at \[1\]\[1\] is a tuple"),
    ({"tags": {"a", "b"}}, r"attribute 'tags' is of type 'set', which JSON cannot hold"),
    ({"n": [0.5, {"x": float("nan")}]}, r"attribute 'n' at \[1\]\['x'\] is nan"),
    ({"n": float("-inf")}, r"attribute 'n' is -inf"),
    ({"n": [1, 10**5000]}, r"attribute 'n' at \[1\] is an integer of more than 4300 digits"),
]


@pytest.mark.parametrize(("attributes", "message"), CHANGED_BY_JSON)
def test_values_json_would_give_back_changed_are_refused_at_every_depth(
    make_service: ServiceFactory,
    make_peer: ServiceFactory,
    attributes: dict[str, Any],
    message: str,
) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"map": {"1": "a"}})
    with pytest.raises(SessionDataError, match=message):
        svc.create_session("bob", attributes)
    with pytest.raises(SessionDataError, match=message):
        svc.update_session(sid, attributes)
    assert svc.stats()["pending_changes"] == 0, "nothing was queued"
    assert svc.sessions_of("bob") == [], "the refused session does not exist"
    assert svc.update_session(sid, {"n": 1})
    assert svc.force_save() == 0, "the update was committed before it returned"
    session = svc.get_session(sid)
    assert session is not None and session.attributes == {"map": {"1": "a"}, "n": 1}
    stored = make_peer().get_session(sid)
    assert stored is not None and stored.attributes == {"map": {"1": "a"}, "n": 1}


def test_max_session_bytes_counts_utf8_bytes_not_characters(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service(max_session_bytes=1024)
    with pytest.raises(SessionDataError, match=r"take 1\d{3} bytes, over max_session_bytes"):
        svc.create_session("alice", {"a": "é" * 600})  # 600 characters, 1,200 bytes
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        svc.create_session("alice", {"a": "😀" * 260})  # 260 characters, 1,040 bytes
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        svc.create_session("alice", {"é" * 400: "e" * 300})  # the name counts too
    sid = svc.create_session("alice", {"a": "é" * 400})  # 800 bytes
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        svc.update_session(sid, {"b": "😀" * 60})  # 240 more bytes
    assert svc.update_session(sid, {"b": "e" * 100})
    expected: Sessions = {sid: ("alice", {"a": "é" * 400, "b": "e" * 100})}
    assert_written_and_reopened(svc, make_peer, expected)


@pytest.mark.backends("memory", "file")
def test_the_default_limit_refuses_a_quarter_megabyte_of_four_byte_characters(
    make_service: ServiceFactory,
) -> None:
    svc = make_service()
    with pytest.raises(SessionDataError, match=r"take 260\d{3} bytes"):
        svc.create_session("alice", {"blob": "😀" * 65_000})  # 65,000 characters
    assert svc.create_session("alice", {"blob": "😀" * 16_000})  # 64,000 bytes
    assert svc.validate_session(svc.sessions_of("alice")[0]).reason is Reason.OK


# -- data already in a store is kept, whatever the call-time rules --------------------------


def _edit_file(path: Path, sid: str, attributes: dict[str, Any]) -> None:
    """Give one session of a sessions file ``attributes``, written with ASCII escapes."""
    document = json.loads(path.read_bytes())
    document["sessions"][sid]["attributes"].update(attributes)
    path.write_text(json.dumps(document), encoding="ascii")  # "\ud800" stays an escape


@pytest.mark.backends("file", "aiofile")
def test_a_lone_surrogate_escaped_in_the_file_is_kept_and_blocks_no_write(
    make_service: ServiceFactory, make_peer: ServiceFactory, tmp_path: Path
) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"a": 1})
    svc.shutdown()
    _edit_file(tmp_path / "sessions.json", sid, {"odd": ["x" + SURROGATE]})
    peer = make_peer()
    assert peer.update_session(sid, {"a": 2}), "a session holding an escaped surrogate loads"
    rotated = peer.rotate_session(sid)
    assert rotated is not None
    later = peer.create_session("bob", {"b": 1})
    expected: Sessions = {
        rotated: ("alice", {"a": 2, "odd": ["x" + SURROGATE]}),
        later: ("bob", {"b": 1}),
    }
    assert_written_and_reopened(peer, make_peer, expected)
    assert b"\\ud800" in (tmp_path / "sessions.json").read_bytes(), "written back as an escape"


@pytest.mark.backends("file", "aiofile")
def test_nesting_written_before_the_limit_existed_stays_readable_and_writable(
    make_service: ServiceFactory, make_peer: ServiceFactory, tmp_path: Path
) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"a": 1})
    svc.shutdown()
    old = nested(MAX_NESTING + 20, "leaf")
    _edit_file(tmp_path / "sessions.json", sid, {"old": old})
    peer = make_peer()
    result = peer.validate_session(sid)
    assert result.session is not None and result.session.attributes["old"] == old
    assert peer.update_session(sid, {"a": 2})
    rotated = peer.rotate_session(sid)
    assert rotated is not None
    assert_written_and_reopened(peer, make_peer, {rotated: ("alice", {"a": 2, "old": old})})


@pytest.mark.backends("redis", "async-redis")
def test_a_redis_hash_holding_escaped_surrogates_or_deep_nesting_is_kept_on_a_full_rewrite(
    make_service: ServiceFactory,
    make_peer: ServiceFactory,
    redis_server: RedisServer,
    redis_url: str,
) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"a": 1})
    svc.shutdown()
    prefix = parse_qs(urlsplit(redis_url).query)["prefix"][0]
    client = redis.Redis(port=redis_server.port)
    old = nested(MAX_NESTING + 20, "leaf")
    fields = {".odd": json.dumps({"k": SURROGATE}), ".old": json.dumps(old)}
    client.hset(f"{prefix}:s:{{{sid}}}", mapping=fields)  # type: ignore[arg-type]
    client.close()
    peer = make_peer()
    rotated = peer.rotate_session(sid)  # a new hash, every field written again
    assert rotated is not None
    expected: Sessions = {rotated: ("alice", {"a": 1, "odd": {"k": SURROGATE}, "old": old})}
    assert_written_and_reopened(peer, make_peer, expected)
