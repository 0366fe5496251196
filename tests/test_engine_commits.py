"""The engine in its default mode: each change asks for its commit, a failed commit undoes
the change, an unwritten end stays refused, and a call first asks a polled store whether
another process wrote it. The group-commit bookkeeping (`CommitLog`) on its own."""

from __future__ import annotations

from typing import Any

import pytest

from pooled_sessions import Reason, SessionPoolConfig, StoreUnavailableError
from pooled_sessions.codec import Delete, Upsert
from pooled_sessions.engine.commits import CommitLog, Turn
from pooled_sessions.engine.requests import POLL, Commit, FlushNow, Load, WakeFlusher
from tests.enginekit import Rig

DOWN = StoreUnavailableError("store down")


def committing(**settings: Any) -> Rig:
    return Rig(write_behind=False, **settings)


# -- each change asks for its commit ------------------------------------------------------------


def test_each_change_asks_for_its_commit_and_is_stored_when_it_returns() -> None:
    rig = committing(save_delay_seconds=3600, batch_save_threshold=1000)
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    assert rig.requests[-1] == Commit(1), "the creation's own number"
    assert rig.table.load(sid) is not None and len(rig.engine.pending) == 0
    assert rig.run(rig.engine.update(sid, {"a": 2}))
    assert rig.requests[-1] == Commit(2)
    stored = rig.table.load(sid)
    assert stored is not None and stored["attributes"] == {"a": 2}
    new = rig.run(rig.engine.rotate(sid))
    assert new is not None and rig.table.load(new) is not None and rig.table.load(sid) is None
    assert rig.run(rig.engine.end(new))
    assert rig.table.load(new) is None and new in rig.table.tombstones
    assert not any(isinstance(r, WakeFlusher | FlushNow) for r in rig.requests)


def test_a_touch_is_still_written_behind() -> None:
    rig = committing(expire_minutes=30, batch_save_threshold=2)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.clock.advance(61)  # past the touch step
    rig.requests.clear()
    assert rig.run(rig.engine.validate(sid))
    assert rig.requests == [POLL], "no commit: the touch waits for the flusher"
    assert rig.engine.pending.ids() == [sid]
    other = rig.run(rig.engine.create("bob", {}, None))
    assert rig.engine.pending.ids() == [], "a commit takes the pending touch along"
    stored = rig.table.load(sid)
    assert stored is not None and stored["expires_at"] == rig.clock.now + 1800
    assert other != sid


def test_in_write_through_mode_a_touch_is_written_at_once() -> None:
    rig = committing(expire_minutes=30, save_delay_seconds=0)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.clock.advance(61)
    assert rig.run(rig.engine.validate(sid))
    assert isinstance(rig.requests[-1], FlushNow) and not len(rig.engine.pending)


# -- a failed commit changes nothing ------------------------------------------------------------


def test_a_failed_update_raises_and_the_session_is_as_it_was() -> None:
    rig = committing()
    sid = rig.run(rig.engine.create("alice", {"cart": [1]}, None))
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError, match="store down"):
        rig.run(rig.engine.update(sid, {"cart": [1, 2]}))
    assert len(rig.engine.pending) == 0 and rig.engine.pending.in_flight == 0
    stats = rig.engine.stats()
    assert stats["store_ok"] is False and "store down" in stats["last_error"]
    rig.requests.clear()
    session = rig.run(rig.engine.get(sid))
    assert session is not None and session.attributes == {"cart": [1]}
    assert rig.requests[-1] == Load(sid), "marked to be read again from the store"
    rig.down = None
    assert rig.run(rig.engine.update(sid, {"more": True}))
    stored = rig.table.load(sid)
    assert stored is not None and stored["attributes"] == {"cart": [1], "more": True}
    assert rig.engine.stats()["store_ok"] is True


def test_the_copy_held_is_served_while_the_store_cannot_be_read() -> None:
    rig = committing()
    sid = rig.run(rig.engine.create("alice", {"cart": [1]}, None))
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError):
        rig.run(rig.engine.update(sid, {"cart": [1, 2]}))
    flow = rig.engine.validate(sid)
    assert flow.send(None) == POLL
    assert flow.send(False) == Load(sid), "marked to be read again"
    with pytest.raises(StopIteration) as stop:
        flow.throw(StoreUnavailableError("still down"))
    result = stop.value.value
    assert result and result.session.attributes == {"cart": [1]}, "unchanged, and served"


def test_a_failed_create_leaves_no_session_and_gives_its_slot_back() -> None:
    rig = committing(pool=SessionPoolConfig(max_total=1, max_wait=0))
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError):
        rig.run(rig.engine.create("alice", {"a": 1}, None))
    assert rig.engine.stats()["live_sessions"] == 0
    assert rig.engine.stats()["pool"]["active"] == 0
    rig.down = None
    assert rig.run(rig.engine.sessions_of("alice")) == []
    assert rig.run(rig.engine.create("bob", {}, None)), "the only slot is free again"


def test_a_failed_rotation_keeps_the_old_id() -> None:
    rig = committing(pool=SessionPoolConfig(max_total=1, max_wait=0))
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError):
        rig.run(rig.engine.rotate(sid))
    rig.down = None
    assert rig.engine.pending.ended_ids() == []
    result = rig.run(rig.engine.validate(sid))
    assert result and result.session is not None and result.session.attributes == {"a": 1}
    assert rig.run(rig.engine.sessions_of("alice")) == [sid]
    assert rig.engine.stats()["pool"]["active"] == 1, "the slot went back to the old id"
    new = rig.run(rig.engine.rotate(sid))
    assert new is not None and rig.run(rig.engine.sessions_of("alice")) == [new]


def test_a_rotation_of_a_session_ended_elsewhere_is_refused() -> None:
    """Another process ended the session; this engine, not told yet, rotates its cached
    copy: the store refuses the new id, so the ended session's data lives on nowhere."""
    rig = committing(pool=SessionPoolConfig(max_total=2, max_wait=0))
    sid = rig.run(rig.engine.create("alice", {"cart": [1]}, None))
    rig.table.apply([Delete(sid, "alice", rig.clock.now)])  # the other process's end
    assert rig.run(rig.engine.rotate(sid, username="alice")) is None
    assert len(rig.table) == 0, "no new id in the store"
    assert rig.run(rig.engine.sessions_of("alice")) == []
    assert rig.engine.stats()["pool"]["active"] == 0, "no slot held for either id"
    other = rig.run(rig.engine.create("bob", {}, None))
    assert rig.run(rig.engine.rotate(other)) is not None, "a live session still rotates"


def test_a_later_change_on_top_of_a_failed_one_fails_too() -> None:
    rig = committing()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    first = rig.engine.update(sid, {"b": 2})
    assert first.send(None) == POLL
    commit = first.send(False)
    assert isinstance(commit, Commit)
    flush = rig.take()  # the first change is in flight ...
    second = rig.engine.update(sid, {"c": 3})
    assert second.send(None) == POLL
    later = second.send(False)  # ... and a second one waits for the next flush
    assert isinstance(later, Commit) and later.seq > commit.seq
    rig.engine.flush_failed(flush, DOWN)
    for flow in (first, second):
        with pytest.raises(StoreUnavailableError):
            flow.throw(StoreUnavailableError("thrown by the driver"))
    assert rig.engine.take_flush() is None, "the second change was dropped with the first"
    session = rig.run(rig.engine.get(sid))
    assert session is not None and session.attributes == {"a": 1}


# -- an end is refused at once and never reported done unless written ---------------------------


def test_a_failed_end_raises_stays_refused_and_is_retried() -> None:
    rig = committing(retry_initial_seconds=1.0)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError):
        rig.run(rig.engine.end(sid))
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
    assert rig.run(rig.engine.sessions_of("alice")) == []
    stats = rig.engine.stats()
    assert stats["unwritten_ends"] == 1 and stats["store_ok"] is False
    assert rig.engine.pending.ended_ids() == [sid]
    assert not rig.engine.flush_due(), "retried after the backoff"
    rig.clock.advance(1.0)
    assert rig.engine.flush_due()
    rig.down = None
    retry = rig.take()
    assert [type(op) for op in retry.operations] == [Delete]
    rig.engine.flush_succeeded(retry, rig.table.apply(retry.operations), 0.0)
    assert sid in rig.table.tombstones and rig.engine.stats()["unwritten_ends"] == 0


def test_a_touch_in_a_failed_batch_stays_pending() -> None:
    rig = committing(expire_minutes=30)
    sid = rig.run(rig.engine.create("alice", {}, None))
    other = rig.run(rig.engine.create("bob", {}, None))
    rig.clock.advance(61)
    assert rig.run(rig.engine.validate(sid))  # a touch past the step, pending
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError):
        rig.run(rig.engine.update(other, {"x": 1}))  # its commit takes the touch along
    assert rig.engine.pending.ids() == [sid], "the touch is kept for the retries"
    op = rig.take().operations[0]
    assert isinstance(op, Upsert) and op.session_id == sid and not op.changed


# -- coherence: a polled store is asked before each call -----------------------------------------


def test_a_call_sees_what_another_process_wrote_at_once() -> None:
    rig = committing()
    sid = rig.run(rig.engine.create("alice", {"cart": [1]}, None))
    other = committing(table=rig.table)
    assert other.run(other.engine.update(sid, {"cart": [1, 2]}))
    rig.changed = True  # the store says: another process wrote me
    session = rig.run(rig.engine.get(sid))
    assert session is not None and session.attributes == {"cart": [1, 2]}
    assert other.run(other.engine.end(sid))
    rig.changed = True
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND


def test_a_store_that_names_what_changed_drops_only_those_sessions() -> None:
    """A poll naming the sessions another process wrote or ended (`Changes`) leaves the
    rest of the cache to answer without a load; True drops every clean entry."""
    rig = committing()
    ids = [rig.run(rig.engine.create(f"user{n}", {"n": n}, None)) for n in range(3)]
    other = committing(table=rig.table)
    assert other.run(other.engine.update(ids[0], {"n": 10}))
    assert other.run(other.engine.end(ids[1]))
    rig.changed = frozenset(ids[:2])
    session = rig.run(rig.engine.get(ids[0]))
    assert session is not None and session.attributes == {"n": 10}
    assert set(rig.engine._entries) == {ids[0], ids[2]}, "the untouched one stays cached"
    assert rig.run(rig.engine.validate(ids[1])).reason is Reason.NOT_FOUND
    rig.requests.clear()
    assert rig.run(rig.engine.validate(ids[2]))
    assert not any(isinstance(r, Load) for r in rig.requests), "served from the cache"
    rig.changed = True
    rig.run(rig.engine.validate(ids[2]))
    assert any(isinstance(r, Load) for r in rig.requests), "True: read again"


def test_write_behind_does_not_poll_before_a_call() -> None:
    rig = Rig(write_behind=True)
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.run(rig.engine.validate(sid))
    assert POLL not in rig.requests


def test_a_forked_engine_owes_nothing_and_keeps_refusing_ended_ids() -> None:
    rig = committing()
    sid = rig.run(rig.engine.create("alice", {}, None))
    rig.down = DOWN
    with pytest.raises(StoreUnavailableError):
        rig.run(rig.engine.end(sid))
    child = rig.engine.forked()
    assert child.take_flush() is None, "what the parent owes stays the parent's"
    assert child.stats()["live_sessions"] == 0 and child.stats()["unwritten_ends"] == 0
    rig.engine = child
    rig.down = None
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND


# -- the group commit's bookkeeping -----------------------------------------------------------


def test_commit_log_turns() -> None:
    log = CommitLog()
    first, second = log.next(), log.next()
    for seq in (first, second):
        log.watch(seq)
    assert log.verdict(first) is Turn.LEAD, "nothing in flight: the first asker leads"
    upto = log.begin()
    assert upto == second and log.verdict(second) is Turn.WAIT
    third = log.next()
    log.watch(third)
    log.end(upto)
    assert log.verdict(first) is log.verdict(second) is Turn.COMMITTED, "one flush, both"
    assert log.verdict(third) is Turn.LEAD, "arrived during the flush: the next one"
    upto = log.begin()
    log.end(upto, DOWN)
    with pytest.raises(StoreUnavailableError, match="store down") as raised:
        log.verdict(third)
    assert raised.value is not DOWN, "each caller raises its own copy"
    log.forget(third)
    log.idle()
    assert log.settled == log.last


def test_a_flush_ending_wakes_the_callers_it_settled_and_names_one_to_lead() -> None:
    """Callers that arrived during a flush do not all wake to race for the next lead: the
    earliest is named, the others wait on until the flush that holds their change ends."""
    log = CommitLog()
    first = log.next()
    log.watch(first)
    assert log.verdict(first) is Turn.LEAD
    upto = log.begin()
    late = [log.next() for _ in range(3)]
    for seq in late:
        log.watch(seq)
        assert log.verdict(seq) is Turn.WAIT and log.waits(seq)
    log.end(upto)
    assert not log.waits(first), "settled: woken to return"
    assert [seq for seq in late if not log.waits(seq)] == [late[0]], "only the earliest"
    assert log.verdict(late[0]) is Turn.LEAD
    assert all(log.waits(seq) for seq in late[1:])
    log.end(log.begin())
    assert not any(log.waits(seq) for seq in late), "one flush took them all"


def test_a_running_caller_leads_before_the_named_one_wakes() -> None:
    log = CommitLog()
    first, waiting = log.next(), log.next()
    log.watch(waiting)
    log.begin()
    log.end(first)
    assert log.named == waiting and not log.waits(waiting)
    newcomer = log.next()
    log.watch(newcomer)
    assert log.verdict(newcomer) is Turn.LEAD, "no wait for the named caller to wake"
    assert log.verdict(waiting) is Turn.WAIT and log.waits(waiting)
    log.end(log.begin())
    assert log.verdict(waiting) is log.verdict(newcomer) is Turn.COMMITTED


def test_a_named_caller_that_leaves_passes_the_lead_on() -> None:
    log = CommitLog()
    first, gone, next_ = log.next(), log.next(), log.next()
    for seq in (gone, next_):
        log.watch(seq)
    log.begin()
    log.end(first)
    assert log.named == gone
    assert log.stand_down(gone), "the driver must wake the next caller"
    log.forget(gone)
    assert log.named == next_ and not log.waits(next_)
    assert not log.stand_down(next_ + 1), "a caller that was never named has nothing to pass"
