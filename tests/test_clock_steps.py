"""Wall-clock steps: a step back never revives a session, a step forward expires only what
the wall clock has passed (pooled_sessions/engine/wallclock.py)."""

from __future__ import annotations

import pytest

from pooled_sessions import Reason, SessionService, Settings
from pooled_sessions.adapters import open_store
from pooled_sessions.clock import FastForwardClock
from pooled_sessions.engine.wallclock import never_back
from tests.backends import ServiceFactory
from tests.enginekit import Rig
from tests.waiting import wait_until

HOUR = 3600.0
IDLE = 30 * 60.0
STORES = ("memory", "file", "redis", "aiofile", "async-redis")
QUIET = {"cleanup_interval_minutes": 600}  # no cleanup races the checks below


def test_step_wall_moves_the_wall_clock_alone() -> None:
    clock = FastForwardClock()
    woken: list[str] = []
    clock.watch(lambda: woken.append("jumped"))
    wall, mono = clock.time(), clock.monotonic()
    clock.step_wall(-HOUR)
    assert -HOUR <= clock.time() - wall < -HOUR + 1.0
    clock.step_wall(2 * HOUR)
    assert HOUR <= clock.time() - wall < HOUR + 1.0
    assert 0.0 <= clock.monotonic() - mono < 1.0, "the monotonic clock did not move"
    assert woken == [], "no timer of a service runs on the wall clock"


def test_never_back_gives_the_latest_reading() -> None:
    readings = iter([10.0, 12.0, 5.0, 11.0, 13.0])
    now = never_back(lambda: next(readings))
    assert [now() for _ in range(5)] == [10.0, 12.0, 12.0, 12.0, 13.0]


def test_the_engine_refuses_a_reload_of_what_it_saw_expire() -> None:
    rig = Rig(expire_minutes=30)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.clock.advance(IDLE + 1)
    assert rig.engine.cleanup() == 1, "the expired entry leaves the cache"
    rig.clock.now -= HOUR
    assert rig.table.load(sid) is not None, "the store still holds the record"
    assert rig.run(rig.engine.validate(sid)).reason is Reason.EXPIRED
    assert rig.run(rig.engine.get(sid)) is None


@pytest.mark.backends(*STORES)
def test_an_expired_session_stays_expired_after_the_clock_steps_back(
    make_service: ServiceFactory, clock: FastForwardClock
) -> None:
    svc = make_service(expire_minutes=30, clock=clock, **QUIET)
    sid = svc.create_session("alice", {"cart": [1]})
    svc.force_save()
    clock.advance(IDLE + 1)
    assert svc.validate_session(sid).reason is Reason.EXPIRED
    clock.step_wall(-HOUR)
    result = svc.validate_session(sid)
    assert not result and result.reason is Reason.EXPIRED
    assert svc.get_session(sid) is None
    assert svc.update_session(sid, {"cart": [2]}) is False
    assert svc.sessions_of("alice") == []


@pytest.mark.backends(*STORES)
def test_a_process_stepped_back_writes_times_others_agree_with(
    make_service: ServiceFactory, make_peer: ServiceFactory, clock: FastForwardClock
) -> None:
    """Its new sessions do not expire at once for a process whose clock is right, and a
    touch never moves a stored expiry back."""
    right = FastForwardClock()
    svc = make_service(expire_minutes=30, save_delay_seconds=0, clock=clock)
    peer = make_peer(expire_minutes=30, clock=right)
    old = svc.create_session("alice")
    before = svc.get_session(old)
    clock.step_wall(-HOUR)
    assert svc.validate_session(old), "a session live before the step is live after it"
    new = svc.create_session("bob")
    session = svc.get_session(new)
    assert before is not None and session is not None
    assert session.created_at >= before.created_at
    assert session.expires_at >= before.expires_at
    assert peer.validate_session(new), "the new session is live where the clock is right"
    seen = peer.get_session(old)
    assert seen is not None and seen.expires_at >= before.expires_at


@pytest.mark.backends(*STORES)
def test_a_peer_stepped_back_after_the_expiry_sees_the_session_expired(
    make_service: ServiceFactory, make_peer: ServiceFactory, clock: FastForwardClock
) -> None:
    """The peer reads the stored expiry and compares it with the latest time it has read."""
    own = FastForwardClock()
    svc = make_service(expire_minutes=30, clock=clock, **QUIET)
    peer = make_peer(expire_minutes=30, clock=own, **QUIET)
    sid = svc.create_session("alice")
    svc.force_save()
    assert peer.validate_session(sid), "the peer has the session in its cache"
    clock.advance(IDLE + 1)
    own.advance(IDLE + 1)
    assert peer.validate_session(sid).reason is Reason.EXPIRED
    own.step_wall(-HOUR)
    assert not peer.validate_session(sid)
    assert peer.get_session(sid) is None
    assert svc.validate_session(sid).reason is Reason.EXPIRED, "nothing extended it in the store"


@pytest.mark.backends(*STORES)
def test_a_forward_step_expires_only_what_the_wall_clock_passed(
    make_service: ServiceFactory, clock: FastForwardClock
) -> None:
    svc = make_service(expire_minutes=120, clock=clock, **QUIET)
    old = svc.create_session("alice")
    svc.force_save()  # stored before the step (Redis stores no session already expired)
    clock.advance(90 * 60)
    new = svc.create_session("bob")
    svc.force_save()
    clock.step_wall(45 * 60)  # the wall clock passes old's expiry, not new's
    assert svc.validate_session(old).reason is Reason.EXPIRED
    assert svc.validate_session(new)
    clock.step_wall(-45 * 60)  # stepped back again: old does not come back
    assert svc.validate_session(old).reason is Reason.EXPIRED
    assert svc.validate_session(new)


@pytest.mark.redis
def test_redis_expires_the_session_on_its_own_clock(redis_url: str) -> None:
    """A process whose clock is an hour behind from the start cannot tell that a session
    expired; Redis drops it at its own expiry, and the process finds nothing."""
    settings = Settings(backend=redis_url, expire_minutes=1 / 60)  # one second
    with SessionService(redis_url, settings=settings) as svc:
        sid = svc.create_session("alice")
        svc.force_save()
    store = open_store(redis_url, settings)
    try:
        assert wait_until(lambda: store.load(sid) is None, timeout=10.0)
    finally:
        store.close()
    behind = FastForwardClock()
    behind.step_wall(-HOUR)
    with SessionService(redis_url, settings=settings, clock=behind) as late:
        result = late.validate_session(sid)
        assert not result and result.reason is Reason.NOT_FOUND
        assert late.update_session(sid, {"cart": [1]}) is False
