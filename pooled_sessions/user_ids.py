"""Session ids by username, as the engine and the local stores index them.

Most users hold one session: its id is kept bare, and a set only once a user holds two
(a one-element set takes 216 bytes, more than the rest of a small session's index entry).
"""

from __future__ import annotations

from collections.abc import Collection


class IdsByUser:
    """A username -> session ids index; not thread-safe (its owner's lock covers it)."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, str | set[str]] = {}

    def add(self, username: str, session_id: str) -> None:
        """Index ``session_id`` under ``username`` (again is a no-op; an anonymous
        session, username "", belongs to no user and is not indexed)."""
        if not username:
            return
        held = self._ids.get(username)
        if held is None:
            self._ids[username] = session_id
        elif isinstance(held, str):
            if held != session_id:
                self._ids[username] = {held, session_id}
        else:
            held.add(session_id)

    def discard(self, username: str, session_id: str) -> None:
        """Drop ``session_id`` from ``username``'s ids, if it is there."""
        held = self._ids.get(username)
        if held is None:
            return
        if isinstance(held, str):
            if held == session_id:
                del self._ids[username]
            return
        held.discard(session_id)
        if len(held) == 1:
            self._ids[username] = next(iter(held))
        elif not held:
            del self._ids[username]

    def ids(self, username: str) -> Collection[str]:
        """The ids of ``username``'s sessions (empty if none); iterate it before a change."""
        held = self._ids.get(username)
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else held

    def __len__(self) -> int:
        """How many users have at least one session."""
        return len(self._ids)
