"""The engine alone: an injected clock, a `RecordTable` for a store, no I/O and no threads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import pytest

from pooled_sessions import (
    BackPressureError,
    IdInUseError,
    Reason,
    Session,
    SessionDataError,
    StoreUnavailableError,
    codec,
    model,
)
from pooled_sessions.codec import (
    SHARED_TEXT_LENGTH,
    SHARED_TEXTS,
    Delete,
    Upsert,
    encode_attributes,
    short_id,
)
from pooled_sessions.engine.engine import ENDED_MEMORY_SECONDS, Flow, Load, WaitForRoom
from pooled_sessions.engine.requests import FLUSH_NOW, WAKE_FLUSHER, FlushNow, WakeFlusher
from pooled_sessions.model import SHARED_USER_AGENTS, ClientInfo
from pooled_sessions.user_ids import IdsByUser
from tests.enginekit import Rig

T = TypeVar("T")


def upserts(rig: Rig) -> dict[str, Upsert]:
    flush = rig.take()
    ops = {op.session_id: op for op in flush.operations if isinstance(op, Upsert)}
    rig.engine.flush_succeeded(flush, rig.table.apply(flush.operations), 0.0)
    return ops


# -- touch step: sliding expiry without a write per read ----------------------------------


def test_a_touch_is_written_only_past_the_step() -> None:
    rig = Rig(expire_minutes=30)  # the step is min(60 s, 30 min / 10) = 60 s
    assert rig.settings.touch_step == 60.0
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    for _ in range(59):
        rig.clock.advance(1.0)
        assert rig.run(rig.engine.validate(sid))
    assert len(rig.engine.pending) == 0, "59 s of reads moved the expiry by less than the step"
    rig.clock.advance(2.0)
    result = rig.run(rig.engine.validate(sid))
    assert result.session is not None
    assert len(rig.engine.pending) == 1
    op = upserts(rig)[sid]
    assert op.changed == frozenset() and op.removed == frozenset() and not op.created
    assert op.expires_at == result.session.expires_at
    stored = rig.table.load(sid)
    assert stored is not None and stored["expires_at"] == op.expires_at
    rig.clock.advance(30.0)
    assert rig.run(rig.engine.validate(sid))
    assert len(rig.engine.pending) == 0, "the step counts from the expiry last written"


def test_touch_step_setting_and_short_sessions() -> None:
    rig = Rig(expire_minutes=0.5, touch_step_seconds=2.0)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.clock.advance(1.5)
    rig.run(rig.engine.validate(sid))
    assert len(rig.engine.pending) == 0
    rig.clock.advance(1.0)
    rig.run(rig.engine.validate(sid))
    assert len(rig.engine.pending) == 1
    assert Rig(expire_minutes=0.5).settings.touch_step == 3.0  # a tenth of the idle time


def test_get_never_marks_a_session_dirty() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.clock.advance(600)
    assert rig.run(rig.engine.get(sid)) is not None
    assert len(rig.engine.pending) == 0


# -- coalescing ------------------------------------------------------------------------------


def test_changes_to_one_session_coalesce_into_one_write() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    for n in range(20):
        assert rig.run(rig.engine.update(sid, {"n": n}))
    assert rig.run(rig.engine.update(sid, {"b": 2}, remove=["a"]))
    assert len(rig.engine.pending) == 1 and rig.engine.pending.changes == 22
    flush = rig.take()
    assert len(flush.operations) == 1
    op = flush.operations[0]
    assert isinstance(op, Upsert) and op.created
    assert op.changed == {"n", "b"} and op.removed == {"a"}
    assert dict(op.attributes) == {"n": "19", "b": "2"}
    rig.engine.flush_succeeded(flush, rig.table.apply(flush.operations), 0.01)
    stats = rig.engine.stats()
    assert stats["sessions_written"] == 1 and stats["writes_saved"] == 21
    assert stats["pending_changes"] == 0


def test_set_then_remove_and_remove_then_set() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"keep": 0, "x": 1, "y": 1}, None))
    rig.flush()
    rig.run(rig.engine.update(sid, {"x": 2}))
    rig.run(rig.engine.update(sid, {}, remove=["x"]))
    rig.run(rig.engine.update(sid, {}, remove=["y"]))
    rig.run(rig.engine.update(sid, {"y": 3}))
    op = upserts(rig)[sid]
    assert op.removed == {"x"} and op.changed == {"y"}
    stored = rig.table.load(sid)
    assert stored is not None and stored["attributes"] == {"keep": 0, "y": 3}


def test_many_sessions_one_batch() -> None:
    rig = Rig()
    ids = [rig.run(rig.engine.create(f"u{n}", {}, None)) for n in range(50)]
    flush = rig.take()
    assert {op.session_id for op in flush.operations} == set(ids)
    assert rig.engine.take_flush() is None


# -- flush decisions ---------------------------------------------------------------------------


def test_threshold_makes_a_flush_due() -> None:
    rig = Rig(batch_save_threshold=3, save_delay_seconds=100)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.run(rig.engine.update(sid, {"a": 1}))
    assert not rig.engine.flush_due()
    rig.run(rig.engine.update(sid, {"a": 2}))
    assert rig.engine.flush_due(), "three changes reach the threshold even on one session"


def test_delay_makes_a_flush_due() -> None:
    rig = Rig(batch_save_threshold=10, save_delay_seconds=5)
    assert not rig.engine.flush_due()
    assert rig.engine.next_deadline() == rig.clock.mono + 600.0, "only the cleanup is scheduled"
    rig.run(rig.engine.create("alice", {}, None))
    assert rig.engine.next_deadline() == pytest.approx(rig.clock.mono + 5.0)
    rig.clock.advance(4.9)
    rig.run(rig.engine.create("bob", {}, None))
    assert not rig.engine.flush_due(), "the delay counts from the first pending change"
    rig.clock.advance(0.1)
    assert rig.engine.flush_due()
    rig.flush()
    assert not rig.engine.flush_due()


def test_write_through_settings_flush_every_change() -> None:
    rig = Rig(batch_save_threshold=1, save_delay_seconds=0)
    assert rig.settings.write_through
    sid = rig.run(rig.engine.create("alice", {}, None))
    assert rig.requests[-1] == FLUSH_NOW, "the operation asks for its write itself"
    assert not len(rig.engine.pending) and rig.table.load(sid) is not None
    rig.run(rig.engine.update(sid, {"a": 1}))
    assert rig.requests[-1] == FLUSH_NOW
    stored = rig.table.load(sid)
    assert stored is not None and stored["attributes"] == {"a": 1}


# -- what follows an operation -----------------------------------------------------------------


def finish(flow: Flow[T], answers: Mapping[type, object], throw: BaseException | None) -> T:
    """Run ``flow``, answering by request type; ``throw`` is thrown at its `FlushNow`."""
    reply: object = None
    request = flow.send(None)
    while True:
        try:
            if isinstance(request, FlushNow) and throw is not None:
                request = flow.throw(throw)
            else:
                request = flow.send(answers.get(type(request), reply))
        except StopIteration as stop:
            result: T = stop.value
            return result


def test_a_change_wakes_the_flusher_only_when_a_flush_is_due() -> None:
    rig = Rig(batch_save_threshold=3)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.run(rig.engine.update(sid, {"a": 1}))
    assert not any(isinstance(r, WakeFlusher | FlushNow) for r in rig.requests)
    rig.run(rig.engine.update(sid, {"a": 2}))
    assert rig.requests == [WAKE_FLUSHER], "the third change reached the batch threshold"
    assert rig.run(rig.engine.update("G" * 43, {"a": 1})) is False
    assert rig.requests[1:] == [Load("G" * 43)], "no change: nothing follows"


def test_write_through_raises_a_failed_write_of_a_change_but_not_of_a_touch() -> None:
    rig = Rig(save_delay_seconds=0, expire_minutes=30)
    down = StoreUnavailableError("store down")
    with pytest.raises(StoreUnavailableError):
        finish(rig.engine.create("alice", {}, None), {}, down)
    sid = rig.engine.pending.ids()[0]
    rig.flush()
    rig.clock.advance(61)  # the next touch is past the step: it is written
    result = finish(rig.engine.validate(sid), {}, down)
    assert result.valid, "a read does not fail because its touch could not be written"
    assert rig.engine.pending.ids() == [sid], "the touch stays pending for the retries"


# -- failures: backoff and restore ------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_blocks_flushes() -> None:
    rig = Rig(retry_initial_seconds=1.0, retry_max_seconds=8.0, batch_save_threshold=1)
    rig.run(rig.engine.create("alice", {}, None))
    delays = []
    for _ in range(6):
        flush = rig.take()
        delays.append(rig.fail(flush))
        assert not rig.engine.flush_due(), "no retry before the backoff has passed"
        assert rig.engine.next_deadline() == pytest.approx(rig.clock.mono + delays[-1])
        rig.clock.advance(delays[-1])
        assert rig.engine.flush_due()
    for n, delay in enumerate(delays):
        cap = min(8.0, 2.0**n)
        assert 0.75 * cap <= delay <= cap
    stats = rig.engine.stats()
    assert stats["flush_failures"] == 6 and stats["flush_retries"] == 5
    assert "No space left" in stats["last_error"]
    rig.flush()
    stats = rig.engine.stats()
    assert stats["flushes"] == 1 and stats["pending_changes"] == 0
    rig.run(rig.engine.create("bob", {}, None))
    assert rig.engine.flush_due(), "a success resets the backoff"


def test_a_failed_batch_is_retried_after_the_backoff_not_the_save_delay() -> None:
    rig = Rig(save_delay_seconds=5, retry_initial_seconds=0.5)
    rig.run(rig.engine.create("alice", {}, None))
    rig.clock.advance(5)
    delay = rig.fail(rig.take())
    assert delay <= 0.5
    assert rig.engine.next_deadline() == pytest.approx(rig.clock.mono + delay)
    rig.clock.advance(delay)
    assert rig.engine.flush_due()


def test_restore_keeps_newer_changes_on_top() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1, "b": 1}, None))
    rig.flush()
    rig.run(rig.engine.update(sid, {"a": 2}))
    flush = rig.take()  # a=2 in flight
    rig.run(rig.engine.update(sid, {"c": 3}, remove=["a"]))
    rig.fail(flush)
    op = upserts(rig)[sid]
    assert op.changed == {"c"} and op.removed == {"a"}
    stored = rig.table.load(sid)
    assert stored is not None and stored["attributes"] == {"b": 1, "c": 3}


def test_restore_keeps_a_creation_a_full_write() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    flush = rig.take()
    rig.run(rig.engine.update(sid, {"b": 2}))
    rig.fail(flush)
    op = upserts(rig)[sid]
    assert op.created and dict(op.attributes) == {"a": "1", "b": "2"}
    stored = rig.table.load(sid)
    assert stored is not None and stored["attributes"] == {"a": 1, "b": 2}


def test_an_end_during_a_failed_flush_wins() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    flush = rig.take()
    assert rig.run(rig.engine.end(sid))
    rig.fail(flush)
    assert rig.run(rig.engine.get(sid)) is None, "a failed flush must not reinstall it"
    retry = rig.take()
    assert [type(op) for op in retry.operations] == [Delete]
    rig.engine.flush_succeeded(retry, rig.table.apply(retry.operations), 0.0)
    assert rig.table.load(sid) is None and sid in rig.table.tombstones


def test_pending_bound_counts_changes_in_flight() -> None:
    rig = Rig(max_pending_sessions=2)
    rig.room = False
    a = rig.run(rig.engine.create("a", {}, None))
    rig.run(rig.engine.create("b", {}, None))
    flush = rig.take()
    with pytest.raises(BackPressureError, match="2 sessions are waiting"):
        rig.run(rig.engine.create("c", {}, None))
    assert rig.run(rig.engine.update(a, {"x": 1})), "a session already pending has room"
    rig.fail(flush)
    assert len(rig.engine.pending) <= 2


# -- bounded buffer: back-pressure ---------------------------------------------------------------


def test_back_pressure_asks_the_driver_to_wait() -> None:
    rig = Rig(max_pending_sessions=2)
    sids = [rig.run(rig.engine.create(f"u{n}", {}, None)) for n in range(2)]
    rig.room = False
    with pytest.raises(BackPressureError, match="try again later"):
        rig.run(rig.engine.create("late", {}, None))
    assert isinstance(rig.requests[-1], WaitForRoom)
    assert rig.run(rig.engine.update(sids[0], {"a": 1})), "a pending session takes more changes"
    assert rig.run(rig.engine.end(sids[1])), "an end is never refused"
    rig.room = True
    assert rig.run(rig.engine.create("late", {}, None)), "the driver found room"
    assert len(rig.engine.pending) == 3


def test_a_touch_without_room_is_skipped_not_refused() -> None:
    rig = Rig(max_pending_sessions=1)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.run(rig.engine.create("bob", {}, None))
    rig.clock.advance(120)
    assert rig.run(rig.engine.validate(sid)), "a full buffer never refuses a read"
    assert rig.engine.pending.ids() != [sid]


# -- bad data refused at the call -------------------------------------------------------------


def test_bad_data_is_refused_before_anything_is_queued() -> None:
    rig = Rig(max_session_bytes=100)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    with pytest.raises(SessionDataError, match="'f'"):
        rig.run(rig.engine.update(sid, {"ok": 1, "f": object()}))
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        rig.run(rig.engine.update(sid, {"big": "x" * 200}))
    with pytest.raises(SessionDataError):
        rig.run(rig.engine.create("bob", {"nan": float("nan")}, None))
    with pytest.raises(SessionDataError, match="max_session_bytes"):
        rig.run(rig.engine.create("bob", {"big": "x" * 200}, None))
    with pytest.raises(TypeError, match="username"):
        rig.run(rig.engine.create(7, {}, None))  # type: ignore[arg-type]
    assert len(rig.engine.pending) == 0
    session = rig.run(rig.engine.get(sid))
    assert session is not None and session.attributes == {}


# -- tombstones: an ended session never comes back --------------------------------------------


def test_store_refusal_forgets_the_session() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.table.apply([Delete(sid, "alice", rig.clock.now)])  # ended by another process
    rig.run(rig.engine.update(sid, {"late": 1}))
    result = rig.flush()
    assert result.refused == {sid}
    assert rig.table.load(sid) is None
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    assert rig.run(rig.engine.update(sid, {"later": 1})) is False
    assert len(rig.engine.pending) == 0


def test_invalidate_ended_drops_pending_changes() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.run(rig.engine.update(sid, {"a": 1}))
    clean = rig.run(rig.engine.create("bob", {}, None))
    rig.flush()
    rig.run(rig.engine.update(sid, {"a": 1}))
    assert not rig.engine.invalidate(["elsewhere", clean])  # changed elsewhere: no room made
    assert not rig.engine.invalidate(["elsewhere"], ended=True)
    assert rig.engine.invalidate([sid], ended=True)  # a pending change dropped: room made
    assert len(rig.engine.pending) == 0
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    assert not any(isinstance(r, Load) for r in rig.requests[-1:]), "no store read needed"


def test_an_ended_id_cannot_be_reused_nor_resurrected_by_a_late_load() -> None:
    rig = Rig()
    sid = "custom-id"
    rig.run(rig.engine.create("alice", {}, None, session_id=sid))
    rig.flush()
    assert rig.run(rig.engine.end(sid))
    # The end is not written yet; the store still holds the session.
    assert rig.table.load(sid) is not None
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    assert rig.run(rig.engine.sessions_of("alice")) == []
    with pytest.raises(IdInUseError, match="already in use"):
        rig.run(rig.engine.create("mallory", {}, None, session_id=sid))
    rig.flush()
    rig.clock.advance(ENDED_MEMORY_SECONDS + 1)
    rig.engine.cleanup()
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND


def test_a_snapshot_holds_the_fields_a_session_is_built_from() -> None:
    rig = Rig(absolute_lifetime_minutes=60)
    sid = rig.run(rig.engine.create("alice", {"cart": [3, 7]}, {"ip": "203.0.113.7"}))
    result = rig.run(rig.engine.validate(sid))
    snapshot = result.session
    assert snapshot is not None
    built = Session(
        session_id=sid,
        username="alice",
        encoded_attributes={"cart": "[3,7]"},
        ip="203.0.113.7",
        user_agent=None,
        created_at=snapshot.created_at,
        last_accessed_at=snapshot.last_accessed_at,
        expires_at=snapshot.expires_at,
        absolute_expires_at=snapshot.created_at + 3600.0,
    )
    assert snapshot == built and snapshot.attributes == {"cart": [3, 7]}
    snapshot.attributes["cart"].append(9)  # the caller's copy, not the engine's
    assert rig.run(rig.engine.get(sid)) == built


def test_an_id_is_shortened_alike_in_errors_and_reprs() -> None:
    sid = "abcdefghijklmnop"
    assert short_id(sid) == "abcdefgh…"
    rig = Rig()
    rig.run(rig.engine.create("alice", {}, None, session_id=sid))
    with pytest.raises(IdInUseError) as refused:
        rig.run(rig.engine.create("bob", {}, None, session_id=sid))
    assert "abcdefgh…" in str(refused.value) and sid not in str(refused.value)
    session = rig.run(rig.engine.get(sid))
    assert session is not None and "session_id='abcdefgh…'" in repr(session)
    assert sid not in repr(session)


def test_an_unconfirmed_end_is_remembered_past_the_ended_memory() -> None:
    """A store failing for longer than ENDED_MEMORY_SECONDS must not let the session back."""
    rig = Rig(expire_minutes=60)
    sid = rig.run(rig.engine.create("alice", {}, None))
    creation = rig.take()
    assert rig.run(rig.engine.end(sid))
    rig.clock.advance(ENDED_MEMORY_SECONDS + 1)
    rig.engine.cleanup()
    rig.fail(creation)  # the creation failed; the end is still owed
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    rig.table.apply(creation.operations)  # the store somehow holds the creation
    rig.engine.invalidate(None)
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    assert rig.engine.stats()["live_sessions"] == 0
    rig.flush()
    assert rig.table.load(sid) is None and sid in rig.table.tombstones
    rig.clock.advance(ENDED_MEMORY_SECONDS + 1)
    rig.engine.cleanup()
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND, "the tombstone answers"


def test_update_racing_an_end_in_the_same_engine() -> None:
    """An update's store read resumes after an end of the same session: the end wins."""
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.engine.invalidate(None)  # nothing cached: both calls must read the store
    update = rig.engine.update(sid, {"late": 1})
    request = update.send(None)
    assert isinstance(request, Load)
    assert rig.run(rig.engine.end(sid))
    with pytest.raises(StopIteration) as stop:
        update.send(rig.table.load(sid))
    assert stop.value.value is False
    rig.flush()
    assert rig.table.load(sid) is None and sid in rig.table.tombstones


# -- invalidation: another process changed the store --------------------------------------------


def test_invalidate_all_drops_clean_entries_and_keeps_dirty_ones() -> None:
    rig = Rig()
    clean = rig.run(rig.engine.create("alice", {"v": 1}, None))
    dirty = rig.run(rig.engine.create("bob", {"mine": 1}, None))
    rig.flush()
    rig.run(rig.engine.update(dirty, {"mine": 2}))
    # Another process writes both sessions.
    for sid, key in ((clean, "v"), (dirty, "theirs")):
        record = rig.table.load(sid)
        assert record is not None
        rig.table.add(sid, {**record, "attributes": {**record["attributes"], key: 9}})
    rig.engine.invalidate(None)
    assert rig.engine.stats()["live_sessions"] == 1
    session = rig.run(rig.engine.get(clean))
    assert session is not None and session.attributes == {"v": 9}
    session = rig.run(rig.engine.get(dirty))
    assert session is not None and session.attributes == {"mine": 2, "theirs": 9}
    rig.flush()
    stored = rig.table.load(dirty)
    assert stored is not None and stored["attributes"] == {"mine": 2, "theirs": 9}


def test_reloaded_write_invalidates_the_cache() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush(reloaded=True)
    assert rig.engine.stats()["live_sessions"] == 0
    assert rig.run(rig.engine.validate(sid))


def test_unwritten_creation_survives_a_store_without_it() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    rig.engine.invalidate(None)
    session = rig.run(rig.engine.get(sid))
    assert session is not None and session.attributes == {"a": 1}


def test_a_session_the_store_lost_is_forgotten() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    rig.flush()
    rig.run(rig.engine.update(sid, {"b": 2}))
    rig.table.records.clear()  # the file was removed by hand
    rig.engine.invalidate(None)
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    assert len(rig.engine.pending) == 0


# -- expiry and cleanup ---------------------------------------------------------------------------


def test_expiry_and_absolute_lifetime() -> None:
    rig = Rig(expire_minutes=1, absolute_lifetime_minutes=2.5)
    sid = rig.run(rig.engine.create("alice", {}, None))
    for _ in range(4):
        rig.clock.advance(30)
        assert rig.run(rig.engine.validate(sid))
    rig.clock.advance(29)
    result = rig.run(rig.engine.validate(sid))
    assert result.session is not None and result.session.expires_at == rig.clock.now + 1
    rig.clock.advance(1)
    assert rig.run(rig.engine.validate(sid)).reason is Reason.EXPIRED
    other = rig.run(rig.engine.create("bob", {}, None))
    rig.clock.advance(60)
    assert rig.run(rig.engine.validate(other)).reason is Reason.EXPIRED


def test_cleanup_evicts_expired_clean_sessions_on_schedule() -> None:
    rig = Rig(expire_minutes=1, cleanup_interval_minutes=10)
    old = rig.run(rig.engine.create("old", {}, None))
    rig.flush()
    rig.clock.advance(50)
    young = rig.run(rig.engine.create("young", {}, None))
    rig.clock.advance(20)
    assert not rig.engine.cleanup_due()
    rig.clock.advance(600)
    assert rig.engine.cleanup_due()
    rig.clock.advance(-610)  # back to when only the old session has expired
    assert rig.engine.cleanup() == 1
    assert rig.engine.stats()["expired_evicted"] == 1
    assert rig.engine.last_cleanup_at == rig.clock.now
    assert rig.run(rig.engine.get(young)) is not None
    assert old not in rig.engine.pending.ids()


def test_cleanup_keeps_expired_sessions_with_unwritten_changes() -> None:
    rig = Rig(expire_minutes=1)
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    rig.clock.advance(120)
    assert rig.engine.cleanup() == 0
    rig.flush()
    assert rig.table.load(sid) is not None, "the creation still reaches the store"


def test_sessions_of_reads_the_store() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    other = Rig(table=rig.table)
    other.clock.now = rig.clock.now
    assert other.run(other.engine.sessions_of("alice")) == [sid]
    session = other.run(other.engine.get(sid))
    assert session is not None and session.username == "alice"


# -- the drivers' fast path -----------------------------------------------------------------------


def test_validate_cached_answers_only_for_cached_live_sessions() -> None:
    rig = Rig(expire_minutes=1, client_binding="strict")
    sid = rig.run(rig.engine.create("alice", {}, {"ip": "203.0.113.7"}))
    cached = rig.engine.validate_cached(sid, {"ip": "203.0.113.7"})
    assert cached is not None and cached.valid and cached.session is not None
    moved = rig.engine.validate_cached(sid, {"ip": "198.51.100.1"})
    assert moved is not None and moved.reason is Reason.CLIENT_MISMATCH
    assert rig.engine.validate_cached("F" * 43) is None, "unknown: the store must be asked"
    assert rig.engine.validate_cached(12345) is None, "a wrong type goes to the full check"
    rig.flush()
    rig.engine.invalidate(None)
    assert rig.engine.validate_cached(sid) is None, "not cached any more"
    assert rig.run(rig.engine.validate(sid))
    assert rig.engine.validate_cached(sid) is not None
    rig.clock.advance(61)
    assert rig.engine.validate_cached(sid) is None, "expired: the full check gives the reason"
    assert rig.run(rig.engine.validate(sid)).reason is Reason.EXPIRED


def test_validate_cached_touches_and_leaves_a_written_touch_to_validate() -> None:
    rig = Rig(expire_minutes=30)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    rig.clock.advance(30)
    result = rig.engine.validate_cached(sid)
    assert result is not None and result.session is not None
    assert result.session.expires_at == rig.clock.now + 1800, "touched in memory"
    assert not rig.engine.pending.ids(), "within the step nothing is written"
    rig.clock.advance(31)
    assert rig.engine.validate_cached(sid) is None, "past the step: the full check writes it"
    assert not rig.engine.pending.ids()
    result = rig.run(rig.engine.validate(sid))
    assert result.session is not None and result.session.expires_at == rig.clock.now + 1800
    assert rig.engine.pending.ids() == [sid], "past the step the touch is queued"


def test_remembered_clients_still_check_their_input() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {}, None))
    client = {"ip": "2001:DB8::1", "user_agent": "curl"}
    for _ in range(3):
        result = rig.engine.validate_cached(sid, client)
        assert result is not None and result.valid
    session = rig.run(rig.engine.create("bob", {}, client))
    assert rig.run(rig.engine.get(session)).ip == "2001:db8::1"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown keys"):
        rig.engine.validate_cached(sid, {"ip": "2001:db8::1", "port": 80})
    with pytest.raises(TypeError, match="ip must be a str"):
        rig.engine.validate_cached(sid, {"ip": ["2001:db8::1"]})
    with pytest.raises(ValueError, match="not an IP address"):
        rig.engine.validate_cached(sid, {"ip": "example.org"})
    for n in range(3000):  # the memory of clients stays bounded
        rig.engine.validate_cached(sid, {"ip": f"10.0.{n // 256}.{n % 256}"})
    assert len(rig.engine._binding._clients) <= 1024


# -- memory held per session ------------------------------------------------------------------


def test_ids_by_user_keep_a_lone_id_bare_and_follow_adds_and_discards() -> None:
    index = IdsByUser()
    assert list(index.ids("alice")) == []
    index.add("alice", "a1")
    index.add("alice", "a1")
    assert list(index.ids("alice")) == ["a1"] and index._ids["alice"] == "a1"
    index.add("alice", "a2")
    index.add("bob", "b1")
    assert sorted(index.ids("alice")) == ["a1", "a2"] and len(index) == 2
    index.discard("alice", "a1")
    assert index._ids["alice"] == "a2", "back to a bare id"
    index.discard("alice", "zz")
    index.discard("nobody", "a2")
    index.discard("alice", "a2")
    assert list(index.ids("alice")) == [] and len(index) == 1


def test_sessions_of_a_user_through_one_two_and_no_sessions() -> None:
    rig = Rig()
    first = rig.run(rig.engine.create("alice", {}, None))
    second = rig.run(rig.engine.create("alice", {}, None))
    rig.flush()
    assert sorted(rig.run(rig.engine.sessions_of("alice"))) == sorted([first, second])
    assert sorted(rig.table.load_user("alice")) == sorted([first, second])
    for sid, left in ((first, [second]), (second, [])):
        rig.run(rig.engine.end(sid))
        rig.flush()
        assert rig.run(rig.engine.sessions_of("alice")) == left
        assert list(rig.table.load_user("alice")) == left


def test_sessions_hold_short_attribute_texts_once_and_the_store_shares_their_mapping() -> None:
    """A theme or a role is one string for every session that holds it; the local store
    keeps the very mapping of texts the entry holds (no second copy), after a change too."""
    rig = Rig()
    long = "x" * (SHARED_TEXT_LENGTH + 10)
    ids = [
        rig.run(rig.engine.create(f"user{n}", {"theme": "".join(["da", "rk"]), "note": long}, None))
        for n in range(3)
    ]
    entries = [rig.engine._entries[sid] for sid in ids]
    assert entries[0].attributes["theme"] is entries[1].attributes["theme"] == '"dark"'
    assert entries[0].attributes["note"] is not entries[1].attributes["note"]
    rig.flush()
    for sid, entry in zip(ids, entries, strict=True):
        assert rig.table.records[sid].attributes is entry.attributes
    rig.run(rig.engine.update(ids[0], {"theme": "light"}))
    rig.flush()
    assert rig.table.records[ids[0]].attributes is rig.engine._entries[ids[0]].attributes
    assert rig.table.load(ids[0])["attributes"] == {"theme": "light", "note": long}  # type: ignore[index]
    for n in range(SHARED_TEXTS + 10):  # the pool stays bounded
        encode_attributes({"n": n})
    assert len(codec._short_texts._held) <= SHARED_TEXTS


def test_sessions_from_one_browser_share_its_user_agent() -> None:
    rig = Rig()
    agent = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
    ids = [
        rig.run(rig.engine.create(f"user{n}", {}, {"user_agent": "".join([agent, ""])}))
        for n in range(3)
    ]
    held = [rig.engine._entries[sid].user_agent for sid in ids]
    assert held == [agent] * 3 and held[0] is held[1] is held[2]
    for n in range(SHARED_USER_AGENTS + 10):  # the pool stays bounded
        ClientInfo(user_agent=f"agent {n}")
    assert len(model._user_agents._held) <= SHARED_USER_AGENTS
