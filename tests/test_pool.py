"""SessionPool and its policy: limits, waiter order, validation, maintain(), statistics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pooled_sessions import (
    PoolExhaustedError,
    PoolLimits,
    SessionPool,
    SessionPoolConfig,
    SessionService,
)
from pooled_sessions.engine.pool_policy import AcquireSlot, PoolPolicy, PoolStats, acquire
from pooled_sessions.errors import ServiceClosedError
from pooled_sessions.pool import PooledSession
from tests.backends import ServiceAPI, ServiceFactory


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Thing:
    """A poolable object whose health the test controls."""

    made = 0

    def __init__(self) -> None:
        Thing.made += 1
        self.serial = Thing.made
        self.healthy = True
        self.expires_at: float | None = None
        self.data: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def is_valid(self, now: float) -> bool:
        return self.healthy and not self.expired(now)

    def reset(self) -> None:
        self.data, self.expires_at = None, None


def consistent(stats: PoolStats) -> None:
    """The invariants every quiet pool keeps."""
    assert stats.active == stats.borrowed - stats.returned - stats.evicted
    assert stats.created == stats.active + stats.idle + stats.discarded
    assert stats.active <= stats.max_total
    assert stats.max_wait_seconds >= stats.mean_wait_seconds >= 0.0


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


# -- the pure policy ---------------------------------------------------------------------


def test_policy_serves_waiters_first_come_first_served() -> None:
    policy: PoolPolicy[None] = PoolPolicy(PoolLimits(max_total=1))
    first = policy.request(0.0)
    waiters = [policy.request(float(i)) for i in range(1, 4)]
    assert first.granted and not any(t.granted for t in waiters)
    woken: list[int] = []
    for i, ticket in enumerate(waiters):
        ticket.waker = lambda i=i: woken.append(i)
    policy.withdraw(waiters[1], 5.0)  # gave up: leaves the queue
    policy.release(10.0)
    assert [t.granted for t in waiters] == [True, False, False] and woken == [0]
    late = policy.request(11.0)  # no barging past the queue
    assert not late.granted
    policy.release(12.0)
    assert waiters[2].granted and woken == [0, 2] and not late.granted
    stats = policy.stats()
    assert (stats.borrowed, stats.returned, stats.timeouts, stats.waiting) == (3, 2, 1, 1)
    assert stats.max_wait_seconds == 9.0  # asked at 1.0 and 3.0, granted at 10.0 and 12.0
    assert stats.mean_wait_seconds == pytest.approx((0.0 + 9.0 + 9.0) / 3)


def test_policy_gives_back_a_slot_granted_to_a_waiter_that_left() -> None:
    policy: PoolPolicy[None] = PoolPolicy(PoolLimits(max_total=1))
    policy.request(0.0)
    gone, next_one = policy.request(0.0), policy.request(0.0)
    policy.release(1.0)
    assert gone.granted
    policy.withdraw(gone, 1.0)  # granted too late for its caller: passes on
    assert next_one.granted and policy.active == 1


def test_policy_refuses_a_release_it_never_granted() -> None:
    policy: PoolPolicy[None] = PoolPolicy(PoolLimits(max_total=1))
    with pytest.raises(RuntimeError, match="released more often"):
        policy.release(0.0)


def test_policy_keeps_idle_objects_only_up_to_its_bounds() -> None:
    services: PoolPolicy[object] = PoolPolicy(PoolLimits(max_total=2))
    assert not services.push_idle(object()) and services.idle_shortfall() == 0
    standalone: PoolPolicy[object] = PoolPolicy(PoolLimits(max_total=2), max_idle=1, min_idle=1)
    assert standalone.idle_shortfall() == 1
    assert standalone.push_idle(object()) and not standalone.push_idle(object())
    assert standalone.idle_shortfall() == 0 and standalone.stats().idle == 1


def test_acquire_generator_withdraws_when_abandoned_or_timed_out() -> None:
    config = PoolLimits(max_total=1, max_wait=0.25)
    policy: PoolPolicy[None] = PoolPolicy(config)
    policy.request(0.0)
    op = acquire(policy, lambda: 0.0, config.max_wait)
    request = next(op)
    assert isinstance(request, AcquireSlot) and request.timeout == 0.25
    op.close()  # the driver abandoned the wait (cancelled, interrupted)
    assert policy.stats().waiting == 0 and policy.stats().timeouts == 1
    op = acquire(policy, lambda: 0.0, config.max_wait)
    next(op)
    with pytest.raises(PoolExhaustedError, match=r"all 1 live-session slots.*0\.25 s"):
        op.send(None)
    assert policy.stats().waiting == 0 and policy.stats().timeouts == 2


def test_stats_read_like_a_mapping() -> None:
    stats = SessionPool().get_stats()
    assert stats["active"] == stats.active == 0
    assert stats.as_dict()["max_total"] == 100
    with pytest.raises(KeyError):
        stats["nope"]


# -- SessionPool -------------------------------------------------------------------------


def test_defaults_of_the_commons_pool_design() -> None:
    config = SessionPool().config
    assert (config.max_total, config.max_idle, config.min_idle, config.max_wait) == (
        100,
        20,
        5,
        5.0,
    )
    assert config.test_on_borrow and config.test_on_return


def test_returned_object_is_reused_and_wiped() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=2))
    first = pool.borrow_session().open("alice", 60, attributes={"role": "admin"}, ip="192.0.2.1")
    assert first.username == "alice" and first.is_valid(time.time())
    assert pool.return_session(first) is True
    again = pool.borrow_session()
    assert again is first
    assert again.username is None and again.attributes == {} and again.ip is None
    consistent(pool.get_stats())


def test_borrow_past_max_total_waits_max_wait_then_raises() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=2, max_wait=0.2))
    held = [pool.borrow_session(), pool.borrow_session()]
    started = time.monotonic()
    with pytest.raises(PoolExhaustedError, match=r"all 2 live-session slots.*max_total"):
        pool.borrow_session()
    assert 0.19 <= time.monotonic() - started < 2.0
    with pytest.raises(PoolExhaustedError):
        pool.borrow_session(timeout=0)
    stats = pool.get_stats()
    assert (stats.active, stats.timeouts, stats.waiting) == (2, 2, 0)
    for obj in held:
        pool.return_session(obj)
    consistent(pool.get_stats())


def test_borrow_timeout_is_checked() -> None:
    with pytest.raises(ValueError, match="timeout"):
        SessionPool().borrow_session(timeout=-1)


def test_sixteen_threads_contending() -> None:
    """Never more than max_total out; every borrow served or timed out; stats add up."""
    max_total = 4
    pool = SessionPool(
        SessionPoolConfig(max_total=max_total, max_idle=4, min_idle=0, max_wait=0.02), factory=Thing
    )
    lock = threading.Lock()
    out = peak = served = timed_out = 0
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        nonlocal out, peak, served, timed_out
        try:
            for i in range(15):
                try:
                    obj = pool.borrow_session()
                except PoolExhaustedError:
                    with lock:
                        timed_out += 1
                    continue
                with lock:
                    out += 1
                    peak = max(peak, out)
                    served += 1
                assert obj.data is None  # never another borrower's leftovers
                obj.data = f"t{seed}"
                time.sleep(0.005 * ((seed + i) % 4))  # mean hold 7.5 ms: waits build up
                obj.healthy = (seed + i) % 11 != 0  # some come back broken
                with lock:
                    out -= 1
                pool.return_session(obj)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    stats = pool.get_stats()
    assert 1 <= peak <= max_total
    assert served + timed_out == 16 * 15
    assert served > 16 and timed_out > 0  # both outcomes happened
    assert stats.borrowed == served and stats.timeouts == timed_out
    assert stats.returned == served and stats.active == 0 and stats.waiting == 0
    assert stats.discarded >= 1  # the broken ones
    assert stats.idle <= 4
    assert stats.created <= served and stats.created <= stats.idle + stats.discarded
    consistent(stats)


def test_waiters_are_served_in_arrival_order() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=1, max_idle=1, min_idle=0, max_wait=5.0))
    held = pool.borrow_session()
    order: list[int] = []
    release_each = threading.Event()

    def waiter(n: int) -> None:
        obj = pool.borrow_session()
        order.append(n)
        release_each.wait(5)
        pool.return_session(obj)

    threads = []
    for n in range(5):
        thread = threading.Thread(target=waiter, args=(n,))
        thread.start()
        threads.append(thread)
        wait_until(lambda n=n: pool.get_stats().waiting == n + 1)  # type: ignore[misc]
    release_each.set()
    pool.return_session(held)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]
    consistent(pool.get_stats())


def test_a_timed_out_waiter_does_not_block_the_queue() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=1, max_idle=1, min_idle=0, max_wait=5.0))
    held = pool.borrow_session()
    results: dict[str, Any] = {}

    def impatient() -> None:
        try:
            pool.borrow_session(timeout=0.05)
        except PoolExhaustedError as exc:
            results["impatient"] = exc

    def patient() -> None:
        results["patient"] = pool.borrow_session()

    first = threading.Thread(target=impatient)
    first.start()
    wait_until(lambda: pool.get_stats().waiting == 1)
    second = threading.Thread(target=patient)
    second.start()
    first.join(5)
    assert isinstance(results["impatient"], PoolExhaustedError)
    pool.return_session(held)
    second.join(5)
    assert results["patient"] is held
    stats = pool.get_stats()
    assert (stats.timeouts, stats.waiting, stats.active) == (1, 0, 1)


def test_validation_on_borrow_discards_idle_objects_gone_bad() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=3), factory=Thing)
    a, b = pool.borrow_session(), pool.borrow_session()
    pool.return_session(a)
    pool.return_session(b)
    a.healthy = False  # went bad while idle
    got = pool.borrow_session()
    assert got is not a and got is b  # the newest idle one first, the bad one skipped
    got2 = pool.borrow_session()
    assert got2 is not a and got2 is not b  # a was discarded, so a new object
    stats = pool.get_stats()
    assert (stats.created, stats.discarded, stats.idle) == (3, 1, 0)
    consistent(stats)


def test_without_test_on_borrow_a_bad_idle_object_is_lent() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=2, test_on_borrow=False), factory=Thing)
    a = pool.borrow_session()
    pool.return_session(a)
    a.healthy = False
    assert pool.borrow_session() is a


def test_validation_on_return_discards_broken_and_expired_objects() -> None:
    clock = Clock()
    pool = SessionPool(SessionPoolConfig(max_total=3), factory=Thing, clock=clock)
    broken, expired, fine = (pool.borrow_session() for _ in range(3))
    broken.healthy = False
    expired.expires_at = clock.now - 1
    fine.expires_at = clock.now + 60
    assert pool.return_session(broken) is False
    assert pool.return_session(expired) is False
    assert pool.return_session(fine) is True
    stats = pool.get_stats()
    assert (stats.returned, stats.discarded, stats.idle, stats.active) == (3, 2, 1, 0)
    consistent(stats)


def test_without_test_on_return_a_broken_object_is_kept() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=1, test_on_return=False), factory=Thing)
    obj = pool.borrow_session()
    obj.healthy = False
    assert pool.return_session(obj) is True


def test_pooled_session_expiry_and_invalidation() -> None:
    clock = Clock()
    pool = SessionPool(SessionPoolConfig(max_total=2), clock=clock)
    session = pool.borrow_session().open("bob", 30, now=clock.now)
    clock.now += 20
    session.touch(clock.now, 30)
    clock.now += 20
    assert session.is_valid(clock.now)
    session.invalidate()
    assert pool.return_session(session) is False
    with pytest.raises(ValueError, match="session_id"):
        pool.borrow_session().open("bob", 30, session_id="not valid!")


def test_idle_list_is_capped_at_max_idle() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=5, max_idle=2, min_idle=0), factory=Thing)
    objs = [pool.borrow_session() for _ in range(5)]
    kept = [pool.return_session(obj) for obj in objs]
    assert kept == [True, True, False, False, False]
    stats = pool.get_stats()
    assert (stats.idle, stats.discarded) == (2, 3)
    consistent(stats)


def test_maintain_evicts_expired_objects_on_loan_and_frees_their_slots() -> None:
    clock = Clock()
    pool = SessionPool(
        SessionPoolConfig(max_total=2, max_idle=2, min_idle=0, max_wait=0),
        factory=Thing,
        clock=clock,
    )
    old, young = pool.borrow_session(), pool.borrow_session()
    old.expires_at, young.expires_at = clock.now + 10, clock.now + 100
    with pytest.raises(PoolExhaustedError):
        pool.borrow_session()
    clock.now += 11
    report = pool.maintain()
    assert report.evicted == 1
    newcomer = pool.borrow_session()  # the evicted one's slot
    assert newcomer is not old
    assert pool.return_session(old) is False  # accepted back, discarded
    with pytest.raises(ValueError, match="not borrowed"):
        pool.return_session(old)
    stats = pool.get_stats()
    assert (stats.evicted, stats.active) == (1, 2)
    for obj in (young, newcomer):
        pool.return_session(obj)
    consistent(pool.get_stats())


def test_maintain_wakes_a_waiter_with_an_evicted_slot() -> None:
    clock = Clock()
    pool = SessionPool(
        SessionPoolConfig(max_total=1, max_idle=1, min_idle=0, max_wait=5.0),
        factory=Thing,
        clock=clock,
    )
    obj = pool.borrow_session()
    obj.expires_at = clock.now + 1
    got: list[Thing] = []
    thread = threading.Thread(target=lambda: got.append(pool.borrow_session()))
    thread.start()
    wait_until(lambda: pool.get_stats().waiting == 1)
    clock.now += 2
    started = time.monotonic()
    pool.maintain()
    thread.join(5)
    assert got and got[0] is not obj and time.monotonic() - started < 2.0


def test_maintain_tops_up_to_min_idle_within_max_total() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=4, max_idle=3, min_idle=3), factory=Thing)
    assert pool.maintain().created == 3
    assert pool.get_stats().idle == 3
    assert pool.maintain().created == 0  # already at min_idle
    held = [pool.borrow_session() for _ in range(4)]  # three idle reused, one new
    assert pool.get_stats().created == 4
    assert pool.maintain().created == 0  # no room: all four slots are out
    for obj in held:
        pool.return_session(obj)
    report = pool.maintain()
    assert (report.created, report.trimmed) == (0, 0)
    stats = pool.get_stats()
    assert stats.idle == 3 and stats.discarded == 1
    consistent(stats)


def test_return_of_a_stranger_is_refused() -> None:
    pool = SessionPool(SessionPoolConfig(max_total=1))
    with pytest.raises(ValueError, match="not borrowed from this pool"):
        pool.return_session(PooledSession())
    obj = pool.borrow_session()
    pool.return_session(obj)
    with pytest.raises(ValueError, match="already returned"):
        pool.return_session(obj)


def test_closed_pool_refuses_borrows_and_drops_idle_objects() -> None:
    with SessionPool(SessionPoolConfig(max_total=2)) as pool:
        out = pool.borrow_session()
        idle = pool.borrow_session()
        pool.return_session(idle)
    with pytest.raises(ServiceClosedError):
        pool.borrow_session()
    assert pool.return_session(out) is False
    stats = pool.get_stats()
    assert stats.idle == 0 and stats.active == 0
    consistent(stats)


def test_a_failing_factory_gives_its_slot_back() -> None:
    def broken() -> Thing:
        raise OSError("cannot build")

    pool = SessionPool(SessionPoolConfig(max_total=1, max_wait=0), factory=broken)
    with pytest.raises(OSError):
        pool.borrow_session()
    stats = pool.get_stats()
    assert stats.active == 0 and stats.created == 0


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="SessionPoolConfig"):
        SessionPool({"max_total": 3})  # type: ignore[call-overload]


# -- the services' live sessions ---------------------------------------------------------


def pool_stats(service: ServiceAPI) -> dict[str, Any]:
    stats = service.stats()["pool"]
    assert isinstance(stats, dict)
    return stats


def test_service_without_a_pool_configuration_does_not_cap(make_service: ServiceFactory) -> None:
    service = make_service()
    ids = {service.create_session(f"user{i}") for i in range(150)}
    assert len(ids) == 150
    assert service.stats()["pool"] is None


def test_service_create_past_max_total_waits_then_raises(make_service: ServiceFactory) -> None:
    service = make_service(pool=SessionPoolConfig(max_total=3, max_wait=0.05))
    ids = [service.create_session("alice") for _ in range(3)]
    service.force_save()  # a finished request keeps its session: the slots stay taken
    started = time.monotonic()
    with pytest.raises(PoolExhaustedError, match=r"all 3 live-session slots.*0\.05 s"):
        service.create_session("bob")
    assert time.monotonic() - started >= 0.049
    assert all(service.validate_session(sid) for sid in ids)
    stats = pool_stats(service)
    assert (stats["active"], stats["borrowed"], stats["timeouts"]) == (3, 3, 1)


def test_ending_a_session_frees_a_slot_for_a_waiter(make_service: ServiceFactory) -> None:
    service = make_service(pool=SessionPoolConfig(max_total=2, max_wait=5.0))
    first = service.create_session("alice")
    service.create_session("bob")
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(service.create_session("carol")))
    waiter.start()
    wait_until(lambda: pool_stats(service)["waiting"] == 1)
    started = time.monotonic()
    assert service.end_session(first)
    waiter.join(5)
    assert got and time.monotonic() - started < 2.0
    assert service.validate_session(got[0])
    stats = pool_stats(service)
    assert (stats["active"], stats["returned"], stats["waiting"]) == (2, 1, 0)


def test_service_waiters_are_served_in_order(make_service: ServiceFactory) -> None:
    service = make_service(pool=SessionPoolConfig(max_total=1, max_wait=5.0))
    holder = service.create_session("holder")
    order: list[str] = []
    lock = threading.Lock()

    def login(name: str) -> None:
        sid = service.create_session(name)
        with lock:
            order.append(name)
        time.sleep(0.01)
        service.end_session(sid)

    threads = []
    for n, name in enumerate(["u0", "u1", "u2", "u3"]):
        thread = threading.Thread(target=login, args=(name,))
        thread.start()
        threads.append(thread)
        wait_until(lambda n=n: pool_stats(service)["waiting"] == n + 1)  # type: ignore[misc]
    service.end_session(holder)
    for thread in threads:
        thread.join(10)
    assert order == ["u0", "u1", "u2", "u3"]


def test_service_under_sixteen_threads(make_service: ServiceFactory) -> None:
    max_total = 3
    service = make_service(pool=SessionPoolConfig(max_total=max_total, max_wait=0.02))
    lock = threading.Lock()
    live = peak = made = refused = 0

    def worker(n: int) -> None:
        nonlocal live, peak, made, refused
        for i in range(8):
            try:
                sid = service.create_session(f"user{n}")
            except PoolExhaustedError:
                with lock:
                    refused += 1
                continue
            with lock:
                live += 1
                made += 1
                peak = max(peak, live)
            time.sleep(0.004 * ((n + i) % 3))
            with lock:
                live -= 1
            assert service.end_session(sid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stats = pool_stats(service)
    assert made + refused == 16 * 8 and made > 0
    assert 1 <= peak <= max_total
    assert (stats["borrowed"], stats["returned"], stats["timeouts"]) == (made, made, refused)
    assert stats["active"] == 0 and stats["waiting"] == 0
    assert stats["created"] == stats["active"] + stats["idle"] + stats["discarded"]


def test_expired_sessions_give_their_slots_back(make_service: ServiceFactory) -> None:
    service = make_service(pool=SessionPoolConfig(max_total=2, max_wait=0), expire_minutes=0.002)
    for _ in range(2):
        service.create_session("alice")
    time.sleep(0.15)
    fresh = service.create_session("bob")  # the full pool looks for expired sessions first
    assert service.validate_session(fresh)
    stats = pool_stats(service)
    assert (stats["evicted"], stats["active"]) == (2, 1)


def test_rotation_keeps_the_session_in_its_slot(make_service: ServiceFactory) -> None:
    service = make_service(pool=SessionPoolConfig(max_total=1, max_wait=0))
    sid = service.create_session("alice", {"cart": [1]})
    new_id = service.rotate_session(sid)
    assert new_id is not None and pool_stats(service)["active"] == 1
    with pytest.raises(PoolExhaustedError):
        service.create_session("bob")
    assert service.end_session(new_id)
    service.create_session("bob")


def test_pool_settings_from_the_environment(
    make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLED_SESSIONS_POOL_MAX_TOTAL", "2")
    monkeypatch.setenv("POOLED_SESSIONS_POOL_MAX_WAIT", "0")
    service = make_service()
    service.create_session("a")
    service.create_session("b")
    with pytest.raises(PoolExhaustedError, match="all 2 live-session slots"):
        service.create_session("c")


def test_a_session_ended_on_another_server_frees_its_slot(
    make_service: ServiceFactory, make_peer: ServiceFactory
) -> None:
    service = make_service(
        pool=SessionPoolConfig(max_total=1, max_wait=0), sync_interval_seconds=0.05
    )
    sid = service.create_session("alice")
    service.force_save()
    peer = make_peer()
    assert peer.end_session(sid)
    peer.force_save()
    wait_until(lambda: not service.validate_session(sid))
    assert pool_stats(service)["evicted"] == 1
    service.create_session("bob")


def test_an_abandoned_wait_withdraws_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller interrupted while waiting leaves the queue; its slot is not lost either."""
    import pooled_sessions.service as service_module

    class Interrupted(Exception):
        pass

    def interrupted(lock: threading.Lock, request: AcquireSlot) -> None:
        raise Interrupted

    with SessionService("memory://", pool=SessionPoolConfig(max_total=1, max_wait=5.0)) as svc:
        first = svc.create_session("alice")
        monkeypatch.setattr(service_module, "wait_for_grant", interrupted)
        with pytest.raises(Interrupted):
            svc.create_session("bob")
        monkeypatch.undo()
        stats = pool_stats(svc)
        assert (stats["waiting"], stats["active"], stats["timeouts"]) == (0, 1, 1)
        assert svc.end_session(first)
        svc.create_session("carol")  # the freed slot went to nobody who had left
        assert pool_stats(svc)["active"] == 1
