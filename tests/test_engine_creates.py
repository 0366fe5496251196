"""The engine and a store's create-if-absent: the first write of a session the engine
started is a create; a create the store finds taken, or a change it finds gone, is
dropped here and the id refused, and nothing of it reaches the store."""

from __future__ import annotations

from typing import Any

from pooled_sessions import PoolLimits, Reason
from pooled_sessions.codec import Upsert
from pooled_sessions.engine.engine import Flush
from tests.enginekit import Rig

SID = "minted-by-the-framework-0001"


def pair(**settings: Any) -> tuple[Rig, Rig]:
    """Two engines (two app servers) on one table."""
    first = Rig(**settings)
    return first, Rig(first.table, **settings)


def kinds(flush: Flush) -> list[tuple[bool, bool]]:
    """``(created, create)`` of each upsert of a flush."""
    return [(op.created, op.create) for op in flush.operations if isinstance(op, Upsert)]


def only_upsert(rig: Rig, session_id: str) -> Upsert:
    """The write of ``session_id`` in the next flush (taken from the engine)."""
    (op,) = [op for op in rig.take().operations if op.session_id == session_id]
    assert isinstance(op, Upsert)
    return op


def test_the_first_write_of_a_new_or_rotated_session_is_a_create_and_later_ones_are_not() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    creation = rig.take()
    assert kinds(creation) == [(True, True)]
    rig.fail(creation)
    retry = rig.take()
    assert kinds(retry) == [(True, True)], "a retried creation is no longer a create"
    rig.table.apply(retry.operations)  # written, but the reply was lost: sent again
    result = rig.table.apply(retry.operations)
    assert not result.taken and not result.refused, "a retried creation is taken"
    rig.engine.flush_succeeded(retry, result, 0.0)
    assert rig.run(rig.engine.update(sid, {"a": 2}))
    change = only_upsert(rig, sid)
    assert not change.create and not change.created
    rig.flush()
    new_id = rig.run(rig.engine.rotate(sid))
    assert new_id is not None and only_upsert(rig, new_id).create


def test_of_two_engines_creating_one_id_the_first_written_wins_whole() -> None:
    first, second = pair()
    first.run(first.engine.create("alice", {"owner": "alice"}, None, session_id=SID))
    second.run(second.engine.create("bob", {"owner": "bob", "cart": [1]}, None, session_id=SID))
    assert first.flush().taken == frozenset()
    assert second.flush().taken == frozenset({SID})
    stored = first.table.load(SID)
    assert stored is not None and stored["username"] == "alice"
    assert stored["attributes"] == {"owner": "alice"}, "the two creations were merged"
    assert second.run(second.engine.validate(SID)).reason is Reason.NOT_FOUND
    stats = second.engine.stats()
    assert stats["live_sessions"] == 0 and stats["pending_sessions"] == 0
    won = first.run(first.engine.validate(SID))
    assert won and won.session is not None and won.session.username == "alice"


def test_a_stale_copy_shows_its_own_creation_not_the_one_the_store_holds() -> None:
    first, second = pair()
    first.run(first.engine.create("alice", {"owner": "alice"}, None, session_id=SID))
    second.run(second.engine.create("bob", {"owner": "bob"}, None, session_id=SID))
    first.flush()
    second.engine.invalidate(None)  # another process wrote: cached copies are stale
    seen = second.run(second.engine.validate(SID))
    assert seen and seen.session is not None
    assert (seen.session.username, seen.session.attributes) == ("bob", {"owner": "bob"})
    assert second.flush().taken == frozenset({SID})
    stored = first.table.load(SID)
    assert stored is not None and stored["attributes"] == {"owner": "alice"}


def test_a_taken_creation_gives_its_pool_slot_back() -> None:
    first, second = pair(pool=PoolLimits(max_total=1, max_wait=0))
    first.run(first.engine.create("alice", {}, None, session_id=SID))
    second.run(second.engine.create("bob", {}, None, session_id=SID))
    first.flush()
    second.flush()
    assert second.engine.stats()["pool"]["active"] == 0
    assert second.run(second.engine.create("bob", {}, None))  # the slot is free again


def test_a_change_to_a_session_the_store_no_longer_holds_drops_it_here() -> None:
    rig = Rig()
    sid = rig.run(rig.engine.create("alice", {"a": 1}, None))
    rig.flush()
    rig.table.purge(rig.clock.now + 10**6, 0.0)  # gone from the store (expired, evicted)
    assert rig.run(rig.engine.update(sid, {"a": 2}))  # still cached here
    assert rig.flush().refused == frozenset({sid})
    assert rig.table.load(sid) is None, "a late change recreated the session"
    assert rig.run(rig.engine.validate(sid)).reason is Reason.NOT_FOUND
