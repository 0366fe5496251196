"""Contracts of the optional store capabilities: tombstones, shared slots, watching.

A store's test class inherits the mixin of each capability it has (see
`pooled_sessions.adapters.protocol`): ``ended`` (`TombstoneContract`), ``claim_slot``
(`SlotContract`), ``watch`` (`WatchContract`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

from pooled_sessions.adapters.protocol import (
    AsyncSlotStore,
    AsyncTombstoneStore,
    AsyncWatchableStore,
    SlotStore,
    TombstoneStore,
    WatchableStore,
)
from pooled_sessions.codec import Operation
from pooled_sessions.config import SessionPoolConfig
from pooled_sessions.testing.harness import Heard, StoreContractBase, sleep_past
from pooled_sessions.testing.records import assert_same_record, delete, make_record, new_id, upsert

TOMBSTONE_TTL = 0.5
"""Seconds a tombstone is kept in `TombstoneContract.test_a_tombstone_lasts_its_ttl`."""


def _follows(store: Any, blocking: type, asyncio: type, method: str) -> None:
    """``store`` is an instance of the protocol of its kind, with ``method`` of that kind."""
    asynchronous = inspect.iscoroutinefunction(store.write)
    assert isinstance(store, asyncio if asynchronous else blocking), f"no {method}()"
    kind = inspect.iscoroutinefunction(getattr(store, method))
    assert kind is asynchronous, f"{method} and write are not of one kind (sync or asyncio)"


class TombstoneContract(StoreContractBase):
    """An ended id stays ended for every store object until its tombstone's TTL has passed."""

    def ended(self, store: Any, session_id: str) -> bool:
        """``store.ended(session_id)``, checked to be a bool."""
        answer = self.call(store.ended(session_id))
        assert isinstance(answer, bool), f"ended returned {answer!r}, not a bool"
        return answer

    def test_the_store_can_tell_ended_ids(self) -> None:
        _follows(self.open(), TombstoneStore, AsyncTombstoneStore, "ended")

    def test_unknown_and_live_ids_are_not_ended(self) -> None:
        store, sid = self.open(), new_id()
        self.write(store, [upsert(sid, make_record(time.time()))])
        assert self.ended(store, new_id("unknown")) is False, "an unknown id is ended"
        assert self.ended(store, sid) is False, "a live session is ended"

    def test_an_end_is_seen_by_every_store_object(self) -> None:
        store, peer, sid = self.open(), self.open(), new_id()
        record = make_record(time.time())
        self.write(store, [upsert(sid, record)])
        self.write(peer, [delete(sid, record, time.time())])
        assert self.ended(store, sid), "the other store object does not know the end"
        assert self.ended(peer, sid), "the ending store object does not know the end"

    def test_a_late_write_to_an_ended_id_is_refused(self) -> None:
        store, peer, sid, other = self.open(), self.open(), new_id("ended"), new_id("other")
        record = make_record(time.time())
        self.write(store, [upsert(sid, record)])
        self.write(store, [delete(sid, record, time.time())])
        late = make_record(time.time(), attributes={"x": 1})
        update = upsert(sid, late, created=False, changed={"x"})
        result = self.write(peer, [update, upsert(other, late)])
        assert result.refused == frozenset({sid}), f"a late update: refused {result.refused}"
        result = self.write(store, [upsert(sid, late)])
        assert result.refused == frozenset({sid}), f"a late create: refused {result.refused}"
        for where, reader in (("store", store), ("another store object", peer)):
            assert self.call(reader.load(sid)) is None, f"{where}: an ended session came back"
            assert set(self.call(reader.load_user("alice"))) == {other}, f"{where}: load_user"
        assert_same_record(self.call(store.load(other)), late, "the batch's other session")

    def test_a_create_of_an_ended_id_is_refused_not_taken(self) -> None:
        store, peer, sid = self.open(), self.open(), new_id()
        record = make_record(time.time())
        self.write(store, [upsert(sid, record, create=True)])
        self.write(store, [delete(sid, record, time.time())])
        result = self.write(peer, [upsert(sid, make_record(time.time(), "bob"), create=True)])
        assert result.refused == frozenset({sid}), f"a create of an ended id: {result}"
        assert result.taken == frozenset(), "an ended id is reported taken, not ended"
        assert self.call(store.load(sid)) is None, "a create revived an ended id"

    def test_a_large_batch_refuses_exactly_its_ended_ids(self) -> None:
        store, peer, now = self.open(), self.open(), time.time()
        ended = [new_id(f"ended{n}") for n in range(5)]
        self.write(store, [delete(sid, make_record(now), now) for sid in ended])
        fresh = [new_id(f"new{n}") for n in range(100)]
        batch = [upsert(sid, make_record(now)) for sid in [*fresh[:50], *ended, *fresh[50:]]]
        result = self.write(peer, batch, now)
        assert result.refused == frozenset(ended), f"refused {len(result.refused)} of 5 ended ids"
        assert set(self.scan(store)) == set(fresh), "a large batch revived an ended id"
        for sid in ended:
            assert self.call(store.load(sid)) is None, f"ended {sid} came back"

    def test_an_id_ended_before_it_was_written_is_never_used(self) -> None:
        store, sid = self.open(), new_id()
        record = make_record(time.time())
        self.write(store, [delete(sid, record, time.time())])
        assert self.ended(store, sid), "an end of an unwritten session left no tombstone"
        result = self.write(store, [upsert(sid, record)])
        assert result.refused == frozenset({sid}), "a session was created with an ended id"

    def test_a_tombstone_lasts_its_ttl(self) -> None:
        store, sid = self.open(tombstone_ttl_seconds=TOMBSTONE_TTL), new_id()
        record = make_record(time.time())
        self.write(store, [upsert(sid, record)])
        self.write(store, [delete(sid, record, time.time())])
        written = time.time()
        self.call(store.purge_expired(time.time()))
        assert self.ended(store, sid), "a purge dropped a tombstone younger than its TTL"
        sleep_past(written + TOMBSTONE_TTL)
        self.call(store.purge_expired(time.time()))
        assert self.ended(store, sid) is False, "a tombstone outlived its TTL and a purge"
        assert self.write(store, [upsert(sid, record)]).refused == frozenset()
        assert_same_record(self.call(store.load(sid)), record, "an id whose tombstone expired")


class SlotContract(StoreContractBase):
    """``claim_slot``: at most ``limit`` live sessions across every store object sharing it."""

    def pooled(self) -> Any:
        """A store object opened as a service with a pool opens it."""
        return self.open(pool=SessionPoolConfig())

    def claim(
        self, store: Any, sid: str, limit: int, replaces: Sequence[str] = (), ttl: float = 600.0
    ) -> bool:
        """``store.claim_slot`` for ``sid`` expiring in ``ttl`` seconds, checked to be a bool."""
        answer = self.call(store.claim_slot(sid, time.time() + ttl, limit, replaces))
        assert isinstance(answer, bool), f"claim_slot returned {answer!r}, not a bool"
        return answer

    def test_the_store_can_claim_slots(self) -> None:
        _follows(self.pooled(), SlotStore, AsyncSlotStore, "claim_slot")

    def test_slots_are_limited_across_store_objects(self) -> None:
        one, two = self.pooled(), self.pooled()
        assert self.claim(one, new_id("s1"), 2) and self.claim(two, new_id("s2"), 2)
        assert not self.claim(two, new_id("s3"), 2), "a third slot was granted under limit 2"
        assert not self.claim(one, new_id("s4"), 2), "the other store object passed the limit"

    def test_a_holder_keeps_its_slot(self) -> None:
        one, two, sid = self.pooled(), self.pooled(), new_id()
        assert self.claim(one, sid, 1)
        assert self.claim(two, sid, 1), "a session lost the slot it holds"
        assert not self.claim(one, new_id("other"), 1), "claiming twice took two slots"

    def test_an_ended_sessions_slot_is_handed_over(self) -> None:
        one, two, ended, successor = self.pooled(), self.pooled(), new_id("ended"), new_id()
        assert self.claim(one, ended, 1)
        assert not self.claim(two, new_id("unheld"), 1, replaces=[new_id("none")])
        assert self.claim(two, successor, 1, replaces=[ended]), "the slot was not handed over"
        assert not self.claim(one, ended, 1), "the handed-over slot is still the old session's"

    def test_an_end_frees_its_slot(self) -> None:
        one, two, sid = self.pooled(), self.pooled(), new_id()
        record = make_record(time.time())
        self.write(one, [upsert(sid, record)])
        assert self.claim(one, sid, 1)
        assert not self.claim(one, new_id("waiting"), 1)
        self.write(two, [delete(sid, record, time.time())])
        assert self.claim(one, new_id("next"), 1), "an ended session still holds its slot"

    def test_a_late_write_never_brings_a_handed_over_slot_back(self) -> None:
        one, two, ended, successor = self.pooled(), self.pooled(), new_id("ended"), new_id()
        record = make_record(time.time())
        assert self.claim(one, ended, 1)
        assert self.claim(one, successor, 1, replaces=[ended])
        self.write(one, [upsert(ended, record)])  # its creation, written after the handover
        assert not self.claim(two, new_id("third"), 1, replaces=[ended]), (
            "a write brought a handed-over slot back: two sessions hold one slot"
        )
        assert not self.claim(two, new_id("fourth"), 1), "a write took a slot past the limit"

    def test_a_written_rotation_moves_the_slot_to_the_new_id(self) -> None:
        store, old, new = self.pooled(), new_id("old"), new_id("new")
        record = make_record(time.time())
        assert self.claim(store, old, 1)
        rotation: list[Operation] = [
            delete(old, record, time.time()),
            upsert(new, record, rotated_from=(old,)),
        ]
        self.write(store, rotation)
        self.write(store, rotation)  # a retried write moves nothing twice
        assert not self.claim(store, new_id("other"), 1), "the rotated session lost its slot"
        self.write(store, [delete(new, record, time.time())])
        assert self.claim(store, new_id("next"), 1), "the rotated session's end kept its slot"

    def test_a_rotation_written_after_its_slot_was_handed_over_takes_none(self) -> None:
        one, two, old, new = self.pooled(), self.pooled(), new_id("old"), new_id("new")
        record = make_record(time.time())
        assert self.claim(one, old, 1)
        assert self.claim(one, new_id("successor"), 1, replaces=[old])
        self.write(
            one, [delete(old, record, time.time()), upsert(new, record, rotated_from=(old,))]
        )
        assert not self.claim(two, new_id("third"), 1, replaces=[new, old]), (
            "a rotation written late took a slot that was handed over"
        )

    def test_an_expired_slot_is_freed(self) -> None:
        store = self.pooled()
        expires_at = time.time() + 1.0  # long enough that a loaded machine's next call is in it
        assert self.call(store.claim_slot(new_id("brief"), expires_at, 1, ()))
        assert not self.claim(store, new_id("waiting"), 1)
        sleep_past(expires_at)
        assert self.claim(store, new_id("next"), 1), "an expired session still holds its slot"


class WatchContract(StoreContractBase):
    """A watching store object is told, within ``watch_timeout``, what other ones changed."""

    def watching(self) -> tuple[Any, Heard]:
        """A new store object watching the backing store, and what it is told."""
        store, heard = self.open(), Heard()
        self.call(store.watch(heard))
        return store, heard

    def live_session(self, store: Any) -> str:
        """The id of a session written through ``store``."""
        sid = new_id()
        self.write(store, [upsert(sid, make_record(time.time()))])
        return sid

    def test_the_store_can_watch(self) -> None:
        _follows(self.open(), WatchableStore, AsyncWatchableStore, "watch")

    def test_an_end_by_another_store_object_is_told(self) -> None:
        writer = self.open()
        sid = self.live_session(writer)
        _, heard = self.watching()
        self.write(writer, [delete(sid, make_record(time.time()), time.time())])
        assert heard.wait(sid, True, self.watch_timeout), f"not told of the end: {heard.events}"

    def test_a_change_by_another_store_object_is_told(self) -> None:
        writer = self.open()
        sid = self.live_session(writer)
        _, heard = self.watching()
        change = make_record(time.time(), attributes={"cart": [9]})
        self.write(writer, [upsert(sid, change, created=False, changed={"cart"})])
        assert heard.wait(sid, False, self.watch_timeout), f"not told of the change: {heard.events}"

    def test_a_store_object_is_not_told_of_its_own_writes(self) -> None:
        writer = self.open()
        sid = self.live_session(writer)
        watcher, heard = self.watching()
        change = make_record(time.time(), attributes={"cart": [9]})
        self.write(watcher, [upsert(sid, change, created=False, changed={"cart"})])
        self.write(writer, [delete(sid, change, time.time())])  # told after the own change
        assert heard.wait(sid, True, self.watch_timeout), f"not told of the end: {heard.events}"
        assert not heard.told(sid, False), "a store object was told of its own change"

    def test_no_callback_runs_after_close(self) -> None:
        writer = self.open()
        sid = self.live_session(writer)
        closed, heard = self.watching()
        _, witness = self.watching()
        self.harness.close(closed)
        self.write(writer, [delete(sid, make_record(time.time()), time.time())])
        assert witness.wait(sid, True, self.watch_timeout), "a watching store object missed it"
        assert not heard.told(sid, True), "a closed store object's callback still ran"


__all__ = ["SlotContract", "TombstoneContract", "WatchContract"]
