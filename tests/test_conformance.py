"""The public SessionService API, run on every backend of tests/backends.py.

Every store passes the same suite (dogpile.cache style): a backend only names itself in
`BACKENDS`. Time that must pass (expiry, touches) is skipped with the services' clock
(``clock.advance``), so no test sleeps for it.
"""

from __future__ import annotations

import re
import time

import pytest

from pooled_sessions import ClientInfo, IdInUseError, Reason, ServiceClosedError, SessionError
from pooled_sessions.clock import FastForwardClock
from tests.backends import ServiceFactory
from tests.waiting import wait_until

ID_RE = re.compile(r"[A-Za-z0-9_-]{43,}")
ALICE = {"ip": "203.0.113.7", "user_agent": "Firefox/128"}


# -- create / validate / get -----------------------------------------------------------


def test_create_returns_unique_secure_ids(make_service: ServiceFactory) -> None:
    svc = make_service()
    ids = {svc.create_session("alice") for _ in range(50)}
    assert len(ids) == 50
    assert all(ID_RE.fullmatch(sid) for sid in ids)


def test_validate_returns_the_session(make_service: ServiceFactory) -> None:
    svc = make_service()
    before = time.time()
    sid = svc.create_session("alice", {"role": "admin", "n": [1, 2]}, client_info=ALICE)
    result = svc.validate_session(sid, ALICE)
    assert result and result.valid and result.reason is Reason.OK
    assert not result.client_changed
    session = result.session
    assert session is not None
    assert (session.session_id, session.username) == (sid, "alice")
    assert session.attributes == {"role": "admin", "n": [1, 2]}
    assert (session.ip, session.user_agent) == ("203.0.113.7", "Firefox/128")
    assert before <= session.created_at <= session.last_accessed_at <= time.time()
    assert session.expires_at == pytest.approx(session.last_accessed_at + 30 * 60, abs=1.0)
    assert session.absolute_expires_at is None


def test_validate_refuses_unknown_and_malformed_ids(make_service: ServiceFactory) -> None:
    svc = make_service()
    unknown = svc.validate_session("A" * 43)
    assert not unknown and unknown.reason is Reason.NOT_FOUND and unknown.session is None
    for bad in ("", "has space", "x" * 257, "semi;colon", "é"):
        assert svc.validate_session(bad).reason is Reason.INVALID_ID


def test_snapshot_is_detached_from_the_store(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"cart": [1]})
    snapshot = svc.get_session(sid)
    assert snapshot is not None
    snapshot.attributes["cart"].append(2)
    again = svc.get_session(sid)
    assert again is not None and again.attributes == {"cart": [1]}


def test_get_does_not_touch(make_service: ServiceFactory, clock: FastForwardClock) -> None:
    svc = make_service(clock=clock)
    sid = svc.create_session("alice")
    first = svc.get_session(sid)
    clock.advance(10)
    second = svc.get_session(sid)
    assert first is not None and second is not None
    assert second.last_accessed_at == first.last_accessed_at
    assert second.expires_at == first.expires_at
    assert svc.get_session("B" * 43) is None
    assert svc.get_session("not valid!") is None


def test_validate_touches(make_service: ServiceFactory, clock: FastForwardClock) -> None:
    svc = make_service(clock=clock)
    sid = svc.create_session("alice")
    first = svc.get_session(sid)
    clock.advance(10)
    touched = svc.validate_session(sid).session
    assert first is not None and touched is not None
    assert touched.last_accessed_at > first.last_accessed_at
    assert touched.expires_at > first.expires_at


# -- update / rotate / end / sessions_of --------------------------------------------------


def test_update_merges_and_removes(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"a": 1, "b": 2})
    assert svc.update_session(sid, {"b": 3, "c": {"x": None}})
    assert svc.update_session(sid, {"d": True}, remove=["a", "missing"])
    session = svc.get_session(sid)
    assert session is not None
    assert session.attributes == {"b": 3, "c": {"x": None}, "d": True}


def test_update_of_unknown_or_ended_session_is_false(make_service: ServiceFactory) -> None:
    svc = make_service()
    assert svc.update_session("C" * 43, {"a": 1}) is False
    assert svc.update_session("bad id", {"a": 1}) is False
    sid = svc.create_session("alice")
    assert svc.end_session(sid)
    assert svc.update_session(sid, {"a": 1}) is False


def test_rotate_moves_the_data_to_a_new_id(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session("alice", {"role": "user"}, client_info=ALICE)
    new = svc.rotate_session(sid)
    assert new is not None and new != sid and ID_RE.fullmatch(new)
    assert svc.validate_session(sid).reason is Reason.NOT_FOUND
    session = svc.validate_session(new, ALICE).session
    assert session is not None
    assert (session.username, session.attributes, session.ip) == (
        "alice",
        {"role": "user"},
        "203.0.113.7",
    )
    assert svc.sessions_of("alice") == [new]
    assert svc.rotate_session(sid) is None
    assert svc.rotate_session("D" * 43) is None


def test_end_session(make_service: ServiceFactory) -> None:
    svc = make_service()
    sid = svc.create_session("alice")
    assert svc.end_session(sid) is True
    assert svc.end_session(sid) is False
    assert svc.end_session("E" * 43) is False
    assert svc.end_session("bad id") is False
    assert svc.validate_session(sid).reason is Reason.NOT_FOUND
    assert svc.get_session(sid) is None


def test_sessions_of_lists_live_sessions_oldest_first(make_service: ServiceFactory) -> None:
    svc = make_service()
    first = svc.create_session("alice")
    bob = svc.create_session("bob")
    second = svc.create_session("alice")
    third = svc.create_session("alice")
    assert svc.sessions_of("alice") == [first, second, third]
    assert svc.end_session(second)
    assert svc.sessions_of("alice") == [first, third]
    assert svc.sessions_of("bob") == [bob]
    assert svc.sessions_of("carol") == []
    svc.force_save()
    assert svc.sessions_of("alice") == [first, third]


# -- expiry ------------------------------------------------------------------------------


def test_idle_expiry_with_fractional_minutes(
    make_service: ServiceFactory, clock: FastForwardClock
) -> None:
    svc = make_service(
        expire_minutes=0.5, write_behind=True, save_delay_seconds=60, clock=clock
    )  # 30 s
    sid = svc.create_session("alice", {"a": 1})
    kept = svc.create_session("alice")  # expires before it is written
    session = svc.get_session(sid)
    assert session is not None
    assert session.expires_at - session.last_accessed_at == pytest.approx(30, abs=0.01)
    assert svc.validate_session(sid)
    clock.advance(31)
    result = svc.validate_session(sid)
    assert not result and result.reason is Reason.EXPIRED
    assert svc.get_session(sid) is None
    assert svc.update_session(sid, {"a": 2}) is False
    assert svc.rotate_session(sid) is None
    assert svc.sessions_of("alice") == []
    assert svc.validate_session(kept).reason is Reason.EXPIRED


def test_sliding_expiry_keeps_an_active_session(
    make_service: ServiceFactory, clock: FastForwardClock
) -> None:
    svc = make_service(expire_minutes=1, clock=clock)
    sid = svc.create_session("alice")
    for _ in range(5):  # 100 s in all, each step well inside the idle window
        clock.advance(20)
        assert svc.validate_session(sid), "an active session must not expire"
        # Each touch reaches the store before the next jump, as it would within the save
        # delay on a real clock: a store refuses a late touch of a copy it holds expired.
        svc.force_save()
    clock.advance(61)
    assert svc.validate_session(sid).reason is Reason.EXPIRED


def test_absolute_lifetime_ends_even_an_active_session(
    make_service: ServiceFactory, clock: FastForwardClock
) -> None:
    svc = make_service(expire_minutes=1, absolute_lifetime_minutes=0.5, clock=clock)  # 30 s
    sid = svc.create_session("alice")
    session = svc.get_session(sid)
    assert session is not None and session.absolute_expires_at is not None
    assert session.absolute_expires_at == pytest.approx(session.created_at + 30, abs=0.01)
    assert session.expires_at <= session.absolute_expires_at
    clock.advance(15)
    assert svc.validate_session(sid)
    clock.advance(16)
    assert svc.validate_session(sid).reason is Reason.EXPIRED


def test_expired_sessions_stay_expired_for_a_peer(
    make_service: ServiceFactory, make_peer: ServiceFactory, clock: FastForwardClock
) -> None:
    svc = make_service(expire_minutes=0.5, clock=clock)
    sid = svc.create_session("alice")
    svc.force_save()
    clock.advance(31)
    peer = make_peer(clock=clock)
    assert not peer.validate_session(sid)
    assert peer.get_session(sid) is None


# -- client binding ----------------------------------------------------------------------


def test_binding_off_ignores_the_client(make_service: ServiceFactory) -> None:
    svc = make_service(client_binding="off")
    sid = svc.create_session("alice", client_info=ALICE)
    result = svc.validate_session(sid, {"ip": "198.51.100.1", "user_agent": "curl"})
    assert result.valid and not result.client_changed


def test_binding_report_flags_a_changed_client(make_service: ServiceFactory) -> None:
    svc = make_service(client_binding="report")
    sid = svc.create_session("alice", client_info=ALICE)
    moved = svc.validate_session(sid, {"ip": "198.51.100.1"})
    assert moved.valid and moved.client_changed and moved.reason is Reason.OK
    agent = svc.validate_session(sid, {"ip": "203.0.113.7", "user_agent": "curl"})
    assert agent.valid and agent.client_changed
    same = svc.validate_session(sid, ClientInfo("203.0.113.7", "Firefox/128"))
    assert same.valid and not same.client_changed
    assert not svc.validate_session(sid).client_changed  # no client given: nothing to compare


def test_binding_strict_refuses_a_changed_client(make_service: ServiceFactory) -> None:
    svc = make_service(client_binding="strict")
    sid = svc.create_session("alice", client_info=ALICE)
    moved = svc.validate_session(sid, {"ip": "198.51.100.1"})
    assert not moved and moved.reason is Reason.CLIENT_MISMATCH and moved.session is None
    assert svc.validate_session(sid, {"user_agent": "curl"}).reason is Reason.CLIENT_MISMATCH
    assert svc.validate_session(sid, ALICE)
    assert svc.validate_session(sid, {"ip": " 203.0.113.7 "}), "addresses compare canonically"


def test_strict_binding_can_leave_the_user_agent_out(make_service: ServiceFactory) -> None:
    svc = make_service(client_binding="strict", bind_user_agent=False)
    sid = svc.create_session("alice", client_info=ALICE)
    assert svc.validate_session(sid, {"ip": "203.0.113.7", "user_agent": "curl"})
    assert not svc.validate_session(sid, {"ip": "2001:db8::1", "user_agent": "Firefox/128"})


def test_client_binding_survives_a_peer(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service(client_binding="strict")
    sid = svc.create_session("alice", client_info=ALICE)
    svc.force_save()
    peer = make_peer(client_binding="strict")
    assert peer.validate_session(sid, {"ip": "198.51.100.1"}).reason is Reason.CLIENT_MISMATCH
    assert peer.validate_session(sid, ALICE)


# -- custom ids ----------------------------------------------------------------------------


def test_custom_session_id(make_service: ServiceFactory) -> None:
    svc = make_service()
    assert svc.create_session("alice", session_id="framework-id_123") == "framework-id_123"
    assert svc.validate_session("framework-id_123")
    for bad in ("", "with space", "x" * 257, "a/b", "ü"):
        with pytest.raises(ValueError, match="session_id"):
            svc.create_session("alice", session_id=bad)
    with pytest.raises(TypeError, match="session_id"):
        svc.create_session("alice", session_id=42)  # type: ignore[arg-type]
    assert svc.sessions_of("alice") == ["framework-id_123"]


def test_custom_session_id_collision(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    assert issubclass(IdInUseError, SessionError), "a caller catching the base still does"
    svc = make_service()
    svc.create_session("alice", {"mine": 1}, session_id="taken")
    with pytest.raises(IdInUseError, match="already in use"):
        svc.create_session("mallory", session_id="taken")
    svc.force_save()
    peer = make_peer()
    with pytest.raises(IdInUseError, match="already in use"):
        peer.create_session("mallory", session_id="taken")
    assert svc.end_session("taken")
    with pytest.raises(IdInUseError, match="already in use"):
        svc.create_session("mallory", session_id="taken")
    session = peer.get_session("taken")
    assert session is None or session.username == "alice"


# -- persistence across services -----------------------------------------------------------


def test_force_save_then_a_fresh_service_sees_everything(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    ids = [svc.create_session(f"user{n}", {"n": n}, client_info=ALICE) for n in range(25)]
    assert svc.update_session(ids[0], {"cart": [3, 7]}, remove=["n"])
    rotated = svc.rotate_session(ids[1])
    assert svc.end_session(ids[2])
    svc.force_save()  # the flusher may have written some already (25 creations > threshold)
    stats = svc.stats()
    assert stats["pending_changes"] == 0 and stats["pending_sessions"] == 0
    assert stats["sessions_written"] >= 26
    peer = make_peer()
    for sid in ids[3:] + [ids[0]]:
        assert peer.get_session(sid) == svc.get_session(sid)
    assert rotated is not None and peer.get_session(rotated) == svc.get_session(rotated)
    assert peer.get_session(ids[1]) is None
    assert peer.get_session(ids[2]) is None
    assert peer.validate_session(ids[0]).session is not None
    assert peer.sessions_of("user0") == [ids[0]]


def test_a_peer_sees_changes_made_after_it_started(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service(sync_interval_seconds=0.05)
    peer = make_peer(sync_interval_seconds=0.05)
    sid = svc.create_session("alice", {"v": 1})
    svc.force_save()
    assert peer.validate_session(sid)
    assert svc.update_session(sid, {"v": 2})
    svc.force_save()
    assert wait_until(lambda: (s := peer.get_session(sid)) is not None and s.attributes["v"] == 2)


def test_peers_writing_different_attributes_keep_both(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    peer = make_peer()
    sid = svc.create_session("alice", {"base": 0})
    svc.force_save()
    assert peer.validate_session(sid)
    assert svc.update_session(sid, {"left": 1})
    assert peer.update_session(sid, {"right": 2})
    svc.force_save()
    peer.force_save()
    third = make_peer()
    session = third.get_session(sid)
    assert session is not None
    assert session.attributes == {"base": 0, "left": 1, "right": 2}


def test_ended_sessions_stay_ended_across_a_peer(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    peer = make_peer(sync_interval_seconds=0.05)
    sid = svc.create_session("alice", {"v": 1})
    svc.force_save()
    assert peer.validate_session(sid)  # the peer now holds the session in memory
    assert svc.end_session(sid)
    svc.force_save()
    # A late change on the peer must not bring the session back.
    peer.update_session(sid, {"v": 2})
    peer.force_save()
    assert wait_until(lambda: not peer.validate_session(sid))
    assert peer.validate_session(sid).reason is Reason.NOT_FOUND
    fresh = make_peer()
    assert fresh.get_session(sid) is None
    assert fresh.sessions_of("alice") == []
    assert svc.get_session(sid) is None


def test_end_on_a_peer_of_a_session_it_never_saw(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service()
    sid = svc.create_session("alice")
    svc.force_save()
    peer = make_peer()
    assert peer.end_session(sid) is True
    peer.force_save()
    assert make_peer().get_session(sid) is None


# -- stats and lifecycle ---------------------------------------------------------------------


def test_stats_fields(make_service: ServiceFactory) -> None:
    svc = make_service(write_behind=True)  # changes wait for the flusher and coalesce
    stats = svc.stats()
    for key in (
        "pending_changes",
        "pending_sessions",
        "flushes",
        "store_writes",
        "sessions_written",
        "writes_saved",
        "live_sessions",
        "flush_failures",
        "flush_retries",
        "flush_mean_seconds",
        "flush_max_seconds",
        "last_cleanup_at",
        "last_error",
        "store_ok",
        "unwritten_ends",
        "store",
    ):
        assert key in stats, key
    sid = svc.create_session("alice")
    for n in range(9):
        assert svc.update_session(sid, {"n": n})
    # Ten changes are pending, or a flush took them (settled once its write returns).
    assert wait_until(lambda: (s := svc.stats())["pending_changes"] == 10 or s["flushes"] >= 1)
    svc.force_save()
    stats = svc.stats()
    assert stats["pending_changes"] == 0 and stats["pending_sessions"] == 0
    assert stats["flushes"] >= 1 and stats["store_writes"] >= 1
    assert stats["sessions_written"] >= 1
    assert stats["writes_saved"] >= 8, "ten changes of one session coalesce into one write"
    assert stats["live_sessions"] == 1
    assert stats["flush_failures"] == 0 and stats["last_error"] is None
    assert stats["store_ok"] is True and stats["unwritten_ends"] == 0
    assert 0 <= stats["flush_mean_seconds"] <= stats["flush_max_seconds"]


def test_shutdown_flushes_and_closes(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    svc = make_service(write_behind=True)  # the creation waits for shutdown's flush
    sid = svc.create_session("alice", {"kept": True})
    report = svc.shutdown()
    assert report.complete and report.written >= 1
    assert svc.shutdown().complete, "shutdown is idempotent"
    with pytest.raises(ServiceClosedError):
        svc.validate_session(sid)
    with pytest.raises(ServiceClosedError):
        svc.force_save()
    session = make_peer().get_session(sid)
    assert session is not None and session.attributes == {"kept": True}


def test_context_manager_flushes_on_exit(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    with make_service() as svc:
        sid = svc.create_session("alice")
    assert svc.stats()["closed"] is True
    assert make_peer().get_session(sid) is not None


def test_an_ended_custom_id_is_refused_everywhere(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    """Ids are never reused: a custom id whose session was ended is refused at the call,
    also by a service that never saw that session (another process or app server)."""
    peer = make_peer()  # open before the session exists: nothing about it is cached there
    svc = make_service()
    assert svc.create_session("alice", {"n": 1}, session_id="minted-0001") == "minted-0001"
    assert svc.end_session("minted-0001")
    svc.force_save()
    for service in (peer, make_peer(), svc):
        with pytest.raises(IdInUseError, match="minted-0.*was ended.*never used twice"):
            service.create_session("mallory", session_id="minted-0001")
        assert not service.validate_session("minted-0001")
    assert peer.sessions_of("mallory") == [] and peer.sessions_of("alice") == []
    assert peer.create_session("mallory", session_id="minted-0002") == "minted-0002"


def test_two_services_creating_one_custom_id_never_merge_them(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    """Two app servers accept one custom id before either wrote it: the store keeps the
    creation written first, whole; the other server drops its own and refuses the id."""
    slow = {"write_behind": True, "save_delay_seconds": 60, "batch_save_threshold": 1000}
    first, second = make_service(**slow), make_peer(**slow)
    assert first.create_session("alice", {"owner": "alice"}, session_id="shared-0001")
    assert second.create_session("bob", {"owner": "bob", "cart": [1]}, session_id="shared-0001")
    first.force_save()
    second.force_save()
    won = first.validate_session("shared-0001")
    assert won and won.session is not None and won.session.username == "alice"
    assert second.validate_session("shared-0001").reason is Reason.NOT_FOUND
    stored = make_peer().get_session("shared-0001")
    assert stored is not None and stored.username == "alice"
    assert stored.attributes == {"owner": "alice"}, "the two creations were merged"
    assert make_peer().sessions_of("bob") == []


def test_a_create_of_an_id_another_server_holds_raises_at_the_call(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    """By default a create is committed before it returns, so the second server's create of
    an id the first one holds is refused there and then, and nothing of it is stored; the id
    stays alice's on every server (her next request may reach either)."""
    first, second = make_service(), make_peer()
    assert first.create_session("alice", {"owner": "alice"}, session_id="shared-0002")
    with pytest.raises(IdInUseError):
        second.create_session("bob", {"owner": "bob"}, session_id="shared-0002")
    seen = second.validate_session("shared-0002")
    assert seen and seen.session is not None and seen.session.username == "alice"
    stored = make_peer().get_session("shared-0002")
    assert stored is not None and stored.username == "alice"
    assert stored.attributes == {"owner": "alice"}
    assert make_peer().sessions_of("bob") == []
