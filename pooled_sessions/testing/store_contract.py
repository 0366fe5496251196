"""The contract every store keeps, as pytest mixins a store's own test class inherits.

`BasicStoreContract` holds for every store; `PollContract` for a store that reports
other processes' changes through ``poll`` (rather than ``watch``). The optional
capabilities are in `pooled_sessions.testing.capabilities`. Each test reads the same for a
blocking and an asyncio store: store calls go through ``self.call``.
"""

from __future__ import annotations

import inspect
import time

from pooled_sessions.adapters import check_kind
from pooled_sessions.adapters.protocol import AsyncStore, Store
from pooled_sessions.codec import Operation
from pooled_sessions.testing.harness import StoreContractBase, sleep_past
from pooled_sessions.testing.records import (
    assert_same_record,
    delete,
    make_record,
    new_id,
    upsert,
    variants,
)

CALLS = ("load", "load_user", "write", "purge_expired", "poll", "count", "close")
LARGE_BATCH = 1200
"""Sessions in one large batch: more than a store is likely to send in one request."""


class BasicStoreContract(StoreContractBase):
    """Records round-trip, upserts merge, deletes remove, expired sessions are purged."""

    def test_the_store_follows_the_protocol_of_its_kind(self) -> None:
        store = self.open()
        asynchronous = inspect.iscoroutinefunction(store.write)
        assert isinstance(store, AsyncStore if asynchronous else Store)
        check_kind(store, asynchronous=asynchronous)
        for name in CALLS:
            kind = inspect.iscoroutinefunction(getattr(store, name))
            assert kind is asynchronous, f"{name} is {'not ' * asynchronous}a coroutine function"
        assert isinstance(store.url, str) and store.url, "url must be a non-empty str"

    def test_a_fresh_store_knows_no_session(self) -> None:
        store = self.open()
        assert self.call(store.load(new_id("unknown"))) is None
        assert dict(self.call(store.load_user("nobody"))) == {}
        assert self.call(store.count()) == 0
        assert self.scan(store) == {}

    def test_records_round_trip_every_field_unchanged(self) -> None:
        now = time.time()
        sessions = {new_id(f"v{n}"): record for n, record in enumerate(variants(now))}
        store, peer = self.open(), self.open()
        self.write(store, [upsert(sid, record) for sid, record in sessions.items()], now)
        for sid, record in sessions.items():
            assert_same_record(self.call(store.load(sid)), record, f"load {sid}")
            assert_same_record(self.call(peer.load(sid)), record, f"another store object {sid}")

    def test_write_returns_a_write_result(self) -> None:
        now = time.time()
        result = self.write(self.open(), [upsert(new_id(), make_record(now))], now)
        assert isinstance(result.refused, frozenset), f"refused is {result.refused!r}"
        assert result.refused == frozenset(), f"a new session was refused: {result.refused}"
        assert isinstance(result.reloaded, bool), f"reloaded is {result.reloaded!r}"
        assert isinstance(result.taken, frozenset), f"taken is {result.taken!r}"
        assert result.taken == frozenset(), f"a new session was taken: {result.taken}"

    def test_an_upsert_applies_only_its_changed_and_removed_attributes(self) -> None:
        now, sid = time.time(), new_id()
        store, peer = self.open(), self.open()
        self.write(store, [upsert(sid, make_record(now, attributes={"a": 1, "b": 2, "c": 3}))])
        theirs = make_record(now, attributes={"a": 1, "b": 2, "c": 30})
        self.write(peer, [upsert(sid, theirs, created=False, changed={"c"})])
        mine = make_record(now, attributes={"a": 10, "c": 3, "d": [4]})  # c: a stale copy
        self.write(store, [upsert(sid, mine, created=False, changed={"a", "d"}, removed={"b"})])
        expected = make_record(now, attributes={"a": 10, "c": 30, "d": [4]})
        for where, reader in (("store", store), ("another store object", peer)):
            assert_same_record(self.call(reader.load(sid)), expected, where)

    def test_expiry_and_last_access_never_move_back(self) -> None:
        now, sid, store = time.time(), new_id(), self.open()
        first = make_record(now)
        self.write(store, [upsert(sid, first)])
        expires, accessed = first["expires_at"], first["last_accessed_at"]
        older = make_record(now, expires_at=expires - 100.0, last_accessed_at=accessed - 50.0)
        self.write(store, [upsert(sid, older, created=False, changed=())])
        found = self.call(store.load(sid))
        assert found["expires_at"] == expires, "a late write shortened the expiry"
        assert found["last_accessed_at"] == accessed, "a late write moved the last access back"
        newer = make_record(now, expires_at=expires + 100.0, last_accessed_at=accessed + 1.0)
        self.write(store, [upsert(sid, newer, created=False, changed=())])
        found = self.call(store.load(sid))
        assert found["expires_at"] == newer["expires_at"], "a later expiry was not kept"
        assert found["last_accessed_at"] == newer["last_accessed_at"], "a later access was lost"

    def test_client_fields_follow_the_latest_write_and_none_keeps_them(self) -> None:
        now, sid, store = time.time(), new_id(), self.open()
        first = make_record(now)
        self.write(store, [upsert(sid, first)])
        moved = make_record(now, ip="198.51.100.9", user_agent=None)
        self.write(store, [upsert(sid, moved, created=False, changed=())])
        found = self.call(store.load(sid))
        assert found["ip"] == "198.51.100.9", "a new client address was not written"
        assert found["user_agent"] == first["user_agent"], "user_agent None erased the stored one"

    def test_a_full_upsert_of_a_session_the_store_lacks_writes_it_whole(self) -> None:
        now, sid, store = time.time(), new_id(), self.open()
        record = make_record(now)
        result = self.write(store, [upsert(sid, record, changed={"note"})])
        assert result.refused == frozenset(), "a full upsert (a migration) was refused"
        assert_same_record(self.call(store.load(sid)), record, "a full upsert of a new session")

    def test_a_partial_upsert_of_a_session_the_store_lacks_is_refused(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        gone, kept = new_id("gone"), new_id("kept")
        self.write(store, [upsert(kept, make_record(now))])
        late = upsert(gone, make_record(now), created=False, changed={"note"})
        result = self.write(peer, [late, upsert(kept, make_record(now), created=False)])
        assert result.refused == frozenset({gone}), f"refused {set(result.refused)}"
        assert result.taken == frozenset(), f"a partial upsert was taken: {set(result.taken)}"
        for where, reader in (("store", store), ("the writing store object", peer)):
            assert self.call(reader.load(gone)) is None, f"{where}: a late write created it"
            assert set(self.call(reader.load_user("alice"))) == {kept}, f"{where}: load_user"
            assert self.call(reader.count()) == 1, f"{where}: count"

    def test_a_late_partial_upsert_never_revives_an_expired_session(self) -> None:
        now, sid, store = time.time(), new_id(), self.open()
        brief = make_record(now, expires_at=now + 0.2, absolute_expires_at=None)
        self.write(store, [upsert(sid, brief, create=True)], now)
        sleep_past(brief["expires_at"])
        later = make_record(time.time(), attributes={"late": 1}, absolute_expires_at=None)
        result = self.write(store, [upsert(sid, later, created=False, changed={"late"})])
        assert result.refused == frozenset({sid}), "a late write to an expired session passed"
        found = self.call(store.load(sid))
        assert found is None or found == brief, f"the expired session was changed: {found}"
        self.call(store.purge_expired(time.time()))
        assert self.call(store.load(sid)) is None, "an expired session outlived a purge"

    def test_a_create_of_an_id_another_session_holds_is_taken(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        sid, same_user = new_id("theirs"), new_id("same-user")
        theirs = make_record(now, attributes={"owner": "alice"})
        self.write(store, [upsert(sid, theirs, create=True), upsert(same_user, theirs)])
        mine = make_record(now + 1.0, "bob", attributes={"owner": "bob", "cart": [1]})
        also_mine = make_record(now + 1.0, attributes={"owner": "alice, again"})
        batch = [upsert(sid, mine, create=True), upsert(same_user, also_mine, create=True)]
        result = self.write(peer, batch)
        assert result.taken == frozenset({sid, same_user}), f"taken {set(result.taken)}"
        assert result.refused == frozenset(), f"a taken id is not ended: {set(result.refused)}"
        for where, reader in (("store", store), ("the refused store object", peer)):
            assert_same_record(self.call(reader.load(sid)), theirs, f"{where}: the holder")
            assert_same_record(self.call(reader.load(same_user)), theirs, f"{where}: same user")
            assert dict(self.call(reader.load_user("bob"))) == {}, f"{where}: bob has it"
            assert self.call(reader.count()) == 2, f"{where}: count"

    def test_a_create_sent_again_is_applied_not_taken(self) -> None:
        now, store = time.time(), self.open()
        sid = new_id()
        record = make_record(now)
        for attempt in ("first", "repeated"):
            result = self.write(store, [upsert(sid, record, create=True)])
            assert result.taken == frozenset(), f"{attempt} create: its own session is taken"
            assert_same_record(self.call(store.load(sid)), record, f"{attempt} create")

    def test_a_large_batch_reports_exactly_its_taken_ids(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        held = [new_id(f"held{n}") for n in range(5)]
        self.write(store, [upsert(sid, make_record(now, "carol")) for sid in held])
        fresh = [new_id(f"new{n}") for n in range(100)]
        mine = make_record(now + 1.0, "dave")
        batch = [upsert(sid, mine, create=True) for sid in [*fresh[:50], *held, *fresh[50:]]]
        for attempt in ("first", "repeated"):
            result = self.write(peer, batch, now)
            assert result.taken == frozenset(held), f"{attempt}: taken {len(result.taken)} of 5"
            assert result.refused == frozenset(), f"{attempt}: refused {set(result.refused)}"
        assert set(self.call(store.load_user("dave"))) == set(fresh), "dave's sessions"
        assert set(self.call(store.load_user("carol"))) == set(held), "carol's sessions"
        assert self.call(store.count()) == len(fresh) + len(held)

    def test_a_create_of_an_expired_id_writes_it_whole(self) -> None:
        now, sid, store = time.time(), new_id(), self.open()
        brief = make_record(now, expires_at=now + 0.2, absolute_expires_at=None)
        self.write(store, [upsert(sid, brief, create=True)], now)
        sleep_past(brief["expires_at"])
        fresh = make_record(time.time(), "bob", attributes={"only": "bob's"})
        result = self.write(store, [upsert(sid, fresh, create=True)])
        assert result.taken == frozenset() and result.refused == frozenset()
        assert_same_record(self.call(store.load(sid)), fresh, "a create after an expiry")
        assert set(self.call(store.load_user("bob"))) == {sid}

    def test_a_rotation_is_written_only_if_the_session_it_succeeds_was_held(self) -> None:
        """A login's new id takes over an old one in the batch that ends it: refused when
        another store object ended the old one first (or it was never there), so a session
        ended elsewhere does not live on under a new id; the same batch sent again says the
        same."""
        now, store, peer = time.time(), self.open(), self.open()
        old, ended, never = new_id("old"), new_id("ended-elsewhere"), new_id("never")
        record = make_record(now)
        self.write(store, [upsert(old, record), upsert(ended, record)], now)
        self.write(peer, [delete(ended, record, now + 0.5)], now)
        new, orphans = new_id("new"), [new_id("orphan1"), new_id("orphan2")]
        batch: list[Operation] = [
            delete(old, record, now + 1.0),
            upsert(new, record, create=True, succeeds=old),
            delete(ended, record, now + 1.0),
            upsert(orphans[0], record, create=True, succeeds=ended),
            delete(never, record, now + 1.0),
            upsert(orphans[1], record, create=True, succeeds=never),
        ]
        for attempt in ("first", "repeated"):
            result = self.write(store, batch, now)
            assert result.refused == frozenset(orphans), f"{attempt}: {set(result.refused)}"
            assert result.taken == frozenset(), f"{attempt}: taken {set(result.taken)}"
            assert_same_record(self.call(store.load(new)), record, f"{attempt}: the new id")
            for sid in (old, ended, never, *orphans):
                assert self.call(peer.load(sid)) is None, f"{attempt}: {sid} is held"
            assert set(self.call(peer.load_user(record["username"]))) == {new}, attempt

    def test_a_rotation_sent_without_its_end_never_revives_a_session_ended_elsewhere(
        self,
    ) -> None:
        """A server that hears of another's end of a session just after it marked a login
        of it drops that end from its batch: the new id, sent alone, is refused as the
        session is no longer held, and says the same when the batch is sent again."""
        now, store, peer = time.time(), self.open(), self.open()
        old, never, new, other = new_id("old"), new_id("never"), new_id("new"), new_id("new2")
        record = make_record(now)
        self.write(store, [upsert(old, record)], now)
        self.write(peer, [delete(old, record, now + 0.5)], now)
        batch: list[Operation] = [
            upsert(new, record, create=True, succeeds=old),
            upsert(other, record, create=True, succeeds=never),
        ]
        for attempt in ("first", "repeated"):
            result = self.write(store, batch, now)
            assert result.refused == {new, other}, f"{attempt}: {set(result.refused)}"
            for sid in (old, new, other):
                assert self.call(peer.load(sid)) is None, f"{attempt}: {sid} is held"
            assert self.call(peer.load_user(record["username"])) == {}, attempt

    def test_writing_a_batch_twice_is_harmless(self) -> None:
        now, store = time.time(), self.open()
        a, b, c = new_id("a"), new_id("b"), new_id("c")
        first_a, record_b, record_c = make_record(now), make_record(now, "bob"), make_record(now)
        self.write(store, [upsert(c, record_c)])
        changed_a = make_record(now, attributes={**first_a["attributes"], "x": 1})
        del changed_a["attributes"]["cart"]
        batch: list[Operation] = [
            upsert(a, first_a),
            upsert(b, record_b),
            upsert(a, changed_a, created=False, changed={"x"}, removed={"cart"}),
            delete(c, record_c, now),
        ]
        for attempt in ("first", "repeated"):
            result = self.write(store, batch, now)
            assert result.refused == frozenset(), f"{attempt} batch refused {result.refused}"
            assert_same_record(self.call(store.load(a)), changed_a, f"{attempt} batch: a")
            assert_same_record(self.call(store.load(b)), record_b, f"{attempt} batch: b")
            assert self.call(store.load(c)) is None, f"{attempt} batch: c was not deleted"

    def test_a_large_batch_round_trips_whole(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        sessions = {
            new_id(f"n{n}"): make_record(now, f"user{n % 3}", attributes={"n": n, "tag": "x" * n})
            for n in range(LARGE_BATCH)
        }
        batch = [upsert(sid, record) for sid, record in sessions.items()]
        for attempt in ("first", "repeated"):
            result = self.write(store, batch, now)
            assert result.refused == frozenset(), f"{attempt} large batch refused sessions"
        found = self.scan(peer)
        assert set(found) == set(sessions), f"scan found {len(found)} of {len(sessions)}"
        for sid, record in sessions.items():
            assert_same_record(found[sid], record, f"large batch: {sid}")
        assert self.call(peer.count()) == len(sessions)
        users = {sid for sid, record in sessions.items() if record["username"] == "user1"}
        assert set(self.call(peer.load_user("user1"))) == users, "load_user after a large batch"

    def test_load_user_returns_that_users_sessions_only(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        mine = {new_id("a1"): make_record(now), new_id("a2"): make_record(now, ip=None)}
        bobs = {new_id("b1"): make_record(now, "bob")}
        self.write(store, [upsert(sid, rec) for sid, rec in {**mine, **bobs}.items()])
        for where, reader in (("store", store), ("another store object", peer)):
            found = dict(self.call(reader.load_user("alice")))
            assert set(found) == set(mine), f"{where}: alice's sessions are {sorted(found)}"
            for sid, record in mine.items():
                assert_same_record(found[sid], record, f"{where}: load_user {sid}")
            assert set(self.call(reader.load_user("bob"))) == set(bobs), f"{where}: bob's"

    def test_a_deleted_session_is_gone_for_every_store_object(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        gone, kept = new_id("gone"), new_id("kept")
        self.write(store, [upsert(gone, make_record(now)), upsert(kept, make_record(now))])
        self.write(peer, [delete(gone, make_record(now), time.time())])
        for where, reader in (("store", store), ("the deleting store object", peer)):
            assert self.call(reader.load(gone)) is None, f"{where}: a deleted session loads"
            assert set(self.call(reader.load_user("alice"))) == {kept}, f"{where}: load_user"
            assert set(self.scan(reader)) == {kept}, f"{where}: scan"
            assert self.call(reader.count()) == 1, f"{where}: count"

    def test_purge_expired_removes_expired_sessions_only(self) -> None:
        now, store = time.time(), self.open()
        live, short = new_id("live"), new_id("short")
        brief = make_record(now, expires_at=now + 0.2, absolute_expires_at=None)
        self.write(store, [upsert(live, make_record(now)), upsert(short, brief)], now)
        sleep_past(brief["expires_at"])
        assert self.call(store.purge_expired(time.time())) == 1, "purge must count one session"
        assert self.call(store.load(short)) is None, "an expired session outlived the purge"
        assert_same_record(self.call(store.load(live)), make_record(now), "a live session")
        assert set(self.call(store.load_user("alice"))) == {live}
        assert self.call(store.count()) == 1
        assert self.call(store.purge_expired(time.time())) == 0, "a second purge found more"

    def test_scan_and_count_see_every_session(self) -> None:
        now, store, peer = time.time(), self.open(), self.open()
        sessions = {new_id(f"v{n}"): record for n, record in enumerate(variants(now))}
        self.write(store, [upsert(sid, record) for sid, record in sessions.items()])
        for where, reader in (("store", store), ("another store object", peer)):
            found = self.scan(reader)
            assert set(found) == set(sessions), f"{where}: scan found {sorted(found)}"
            for sid, record in sessions.items():
                assert_same_record(found[sid], record, f"{where}: scan {sid}")
            assert self.call(reader.count()) == len(sessions), f"{where}: count"

    def test_poll_is_false_when_only_this_store_object_wrote(self) -> None:
        store = self.open()
        assert self.call(store.poll()) is False, "poll reported a change nobody made"
        self.write(store, [upsert(new_id(), make_record(time.time()))])
        assert self.call(store.poll()) is False, "poll reported this store object's own write"

    def test_what_was_written_outlives_the_store_object(self) -> None:
        now, sid, store = time.time(), new_id(), self.open()
        record = make_record(now)
        self.write(store, [upsert(sid, record)])
        self.harness.close(store)
        assert_same_record(self.call(self.open().load(sid)), record, "after close, reopened")


class PollContract(StoreContractBase):
    """``poll`` tells a store object that another one (another process) changed the data:
    True, or the ids of the sessions it changed (`codec.Changes`)."""

    def test_poll_reports_another_store_objects_write_once(self) -> None:
        store, peer = self.open(), self.open()
        assert self.call(store.poll()) is False, "poll reported a change nobody made"
        sid, record = new_id(), make_record(time.time())
        self.write(peer, [upsert(sid, record)])
        changes = self.call(store.poll())
        assert changes is True or changes == frozenset({sid}), f"poll said {changes!r} of one write"
        assert self.call(store.poll()) is False, "poll reported the same change twice"
        assert_same_record(self.call(store.load(sid)), record, "after poll")


__all__ = ["BasicStoreContract", "PollContract"]
