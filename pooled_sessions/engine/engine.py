"""The engine: every session decision, with no I/O, no threads and no asyncio.

Each public operation is a flow (`requests.Flow`). It yields a request when it needs the
store (`Load`, `LoadUser`, `Poll`, and, when the store offers them, `Ended` and
`ClaimSlot`) or the driver's patience (`WaitForRoom`, `AcquireSlot`, `Pause`), receives
the answer, and returns its result. An operation that changed a session says itself what
must follow: by default its commit (`Commit`: the call returns once the store holds the
change, or raises with the change undone); with ``write_behind`` a wake-up of the flusher
when a flush is due (`WakeFlusher`); a touch is written behind, or at once in
write-through mode (`FlushNow`). `SessionService` and `AsyncSessionService` only run
these flows and do what they ask, so the policy exists once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pooled_sessions.codec import (
    check_id,
    check_owner,
    check_size,
    check_username,
    encode_attributes,
    short_id,
)
from pooled_sessions.engine.batches import ENDED_MEMORY_SECONDS as ENDED_MEMORY_SECONDS
from pooled_sessions.engine.entry import Entry
from pooled_sessions.engine.pending import Dirty
from pooled_sessions.engine.reads import ClientLike as ClientLike
from pooled_sessions.engine.reads import Reads, id_or_none
from pooled_sessions.engine.requests import NO_OFFERS as NO_OFFERS
from pooled_sessions.engine.requests import AcquireSlot as AcquireSlot
from pooled_sessions.engine.requests import ClaimSlot as ClaimSlot
from pooled_sessions.engine.requests import Ended as Ended
from pooled_sessions.engine.requests import Flow as Flow
from pooled_sessions.engine.requests import Flush as Flush
from pooled_sessions.engine.requests import Load as Load
from pooled_sessions.engine.requests import LoadUser as LoadUser
from pooled_sessions.engine.requests import Pause as Pause
from pooled_sessions.engine.requests import Request as Request
from pooled_sessions.engine.requests import StoreOffers as StoreOffers
from pooled_sessions.engine.requests import WaitForRoom as WaitForRoom
from pooled_sessions.engine.requests import new_session_id as new_session_id
from pooled_sessions.errors import BackPressureError, IdInUseError
from pooled_sessions.model import ClientInfo


def _check_names(remove: Collection[Any]) -> None:
    """Refuse a ``remove`` that is not a collection of attribute names (a lone str is not)."""
    if isinstance(remove, str) or not all(isinstance(k, str) for k in remove):
        raise TypeError("remove must be a collection of attribute names")


class Engine(Reads):
    """Live sessions, their dirty state, and the flush and cleanup decisions.

    The changes below are flows; the reads are `Reads`', the state and what flushes settle
    `Batches`'.
    """

    # -- public operations -------------------------------------------------------------

    def create(
        self,
        username: str | None,
        attributes: Mapping[str, Any] | None,
        client: ClientLike,
        session_id: str | None = None,
    ) -> Flow[str]:
        """Start a session (anonymous when ``username`` is None); returns its id."""
        owner = check_owner(username)
        encoded = encode_attributes({} if attributes is None else attributes)
        info = ClientInfo.coerce(client) or ClientInfo()
        sid = new_session_id() if session_id is None else (yield from self._unused(session_id))
        check_size(sid, encoded, self.settings.max_session_bytes)
        yield from self._room(sid)
        now = self._clock()
        absolute = self.settings.absolute_lifetime_minutes
        first_expiry = (
            now + self._idle if absolute is None else min(now + self._idle, now + absolute * 60.0)
        )
        yield from self.slots.claim(self._entries, now, sid, first_expiry)
        now = self._clock()
        entry = Entry(
            session_id=sid,
            username=owner,
            attributes=encoded,
            ip=info.ip,
            user_agent=info.user_agent,
            created_at=now,
            last_accessed_at=now,
            expires_at=0.0,  # set by _extend below
            absolute_expires_at=None if absolute is None else now + absolute * 60.0,
            stored_expires_at=0.0,
        )
        self._extend(entry, now)
        self._entries.install(entry)
        self.slots.hold(entry)
        seq = self._mark(sid, Dirty(changed=set(encoded), created=True))
        yield from self._follow(seq, raising=True)
        return sid

    def update(
        self, session_id: str, attributes: Mapping[str, Any], remove: Collection[str] = ()
    ) -> Flow[bool]:
        """Merge attributes into a live session (and drop ``remove``); False if it is not live."""
        encoded = encode_attributes(attributes)
        _check_names(remove)
        sid = id_or_none(session_id)
        if sid is None:
            return False
        yield from self._room(sid)
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        if entry is None:
            return False
        merged = self._merged(entry, encoded, remove)
        before = entry.copy() if self.settings.commits else None
        entry.attributes = merged
        self._accessed(entry)
        removed = {k for k in remove if k not in encoded}
        seq = self._mark(sid, Dirty(changed=set(encoded), removed=removed, before=before))
        return (yield from self._follow(seq, raising=True))

    def rotate(
        self,
        session_id: str,
        username: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        remove: Collection[str] = (),
    ) -> Flow[str | None]:
        """Move a live session to a new id; the old id ends. ``username`` binds the new id
        to that user (a login) and ``attributes``/``remove`` change it, in the same commit.
        None if the session is not live."""
        owner = None if username is None else check_username(username)
        encoded = encode_attributes({} if attributes is None else attributes)
        _check_names(remove)
        sid = id_or_none(session_id)
        if sid is None:
            return None
        new_id = new_session_id()
        yield from self._room(new_id)
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        if entry is None:
            return None
        clone = entry.renamed(new_id)
        if owner is not None or encoded or remove:
            clone.username = entry.username if owner is None else owner
            clone.attributes = self._merged(entry, encoded, remove)
            self._accessed(clone)
        self.slots.move(sid, clone)
        self._end(entry)
        self._entries.install(clone)
        stored = sid if entry.stored_expires_at else None
        created = Dirty(
            changed=set(clone.attributes),
            created=True,
            rotated_from=sid,
            succeeds=stored,
            before=entry,
        )
        seq = self._mark(new_id, created)
        if not (yield from self._follow(seq, raising=True)):
            return None  # the store no longer held the old id: ended elsewhere meanwhile
        return new_id

    def end(self, session_id: str) -> Flow[bool]:
        """End a session everywhere; True if a live session ended.

        Ends are accepted past the pending bound: refusing a logout is worse than memory.
        """
        sid = id_or_none(session_id)
        if sid is None:
            return False
        yield from self._fresh()
        entry, _ = yield from self._live(sid)
        if entry is None:
            return False
        seq = self._end(entry)
        yield from self._follow(seq, raising=True)
        return True

    # -- internals ---------------------------------------------------------------------

    def _unused(self, session_id: str) -> Flow[str]:
        """``session_id`` (minted by a web framework) if no session has it or ever had it."""
        sid = check_id(session_id)
        ended = sid in self._ended
        if not ended and (sid in self._entries or (yield Load(sid)) is not None):
            raise IdInUseError(f"session id {short_id(sid)} is already in use")
        if ended or (self.offers.ended and (yield Ended(sid))):
            raise IdInUseError(
                f"session id {short_id(sid)} is already in use: its session was ended, and an id "
                "is never used twice (mint a new one)"
            )
        return sid

    def _room(self, session_id: str) -> Flow[None]:
        if not self.pending.has_room(session_id) and not (yield WaitForRoom(session_id)):
            limit = self.settings.max_pending_sessions
            raise BackPressureError(
                f"{limit} sessions are waiting to be written and the store is not taking "
                f"them ({self.pending.stats.last_error}); try again later"
            )

    def _merged(
        self, entry: Entry, encoded: Mapping[str, str], remove: Collection[str]
    ) -> dict[str, str]:
        """``entry``'s attributes with ``encoded`` set and ``remove`` dropped, size-checked."""
        merged = {k: v for k, v in entry.attributes.items() if k not in remove}
        merged.update(encoded)
        check_size(entry.session_id, merged, self.settings.max_session_bytes)
        return merged

    def _accessed(self, entry: Entry) -> None:
        """A request used ``entry`` now: its idle expiry slides."""
        now = self._clock()
        entry.last_accessed_at = now
        self._extend(entry, now)

    def _end(self, entry: Entry) -> int:
        sid = entry.session_id
        self._entries.remove(sid)
        self.slots.release(sid)
        self._ended[sid] = self._mono()
        return self._mark(sid, Dirty(ended_at=self._clock(), username=entry.username))
