"""A session as the local stores hold it: its attributes kept JSON-encoded.

The memory and file stores keep every record in the process, beside the service's cache
of the same sessions. A `Held` keeps the encoded attribute texts a write carried (the
very mapping the service's entry holds: it is replaced, never changed in place), so a
session both hold costs the store a few pointers, not a second decoded copy. A record is
decoded only when a store hands it out, and encoded to file text only when written. A
`Loaded` record, read from a file, keeps its attributes as parsed until it is changed.
"""

from __future__ import annotations

import json
from typing import Any, Self

from pooled_sessions.codec import (
    Record,
    Upsert,
    document_member,
    encode_record,
    encode_stored,
    encode_value,
    expiry_passed,
)
from pooled_sessions.model import shared_user_agent


class Held:
    """One stored session, written by this process; never changed in place (a write
    replaces it)."""

    __slots__ = (
        "username",
        "attributes",
        "ip",
        "user_agent",
        "created_at",
        "last_accessed_at",
        "expires_at",
        "absolute_expires_at",
    )

    def __init__(
        self,
        username: str,
        attributes: dict[str, Any],
        ip: str | None,
        user_agent: str | None,
        created_at: float,
        last_accessed_at: float,
        expires_at: float,
        absolute_expires_at: float | None,
    ) -> None:
        self.username = username
        self.attributes = attributes
        self.ip = ip
        self.user_agent = user_agent
        self.created_at = created_at
        self.last_accessed_at = last_accessed_at
        self.expires_at = expires_at
        self.absolute_expires_at = absolute_expires_at

    @classmethod
    def of_record(cls, record: Record) -> Self:
        """Hold a record's fields, its attribute mapping as given (kept, not copied)."""
        return cls(
            record["username"],
            record["attributes"],
            record["ip"],
            shared_user_agent(record["user_agent"]),
            record["created_at"],
            record["last_accessed_at"],
            record["expires_at"],
            record["absolute_expires_at"],
        )

    @classmethod
    def of_upsert(cls, op: Upsert) -> Held:
        """The whole session an upsert carries, sharing its attribute mapping."""
        attributes = op.attributes
        return cls(
            op.username,
            attributes if type(attributes) is dict else dict(attributes),
            op.ip,
            op.user_agent,
            op.created_at,
            op.last_accessed_at,
            op.expires_at,
            op.absolute_expires_at,
        )

    def merged(self, op: Upsert) -> Held:
        """This session with an upsert applied: changed keys only, expiry never shortened.

        When the result holds the very texts the upsert carries (no other writer's keys
        kept), it shares the upsert's mapping rather than holding an equal copy."""
        attributes = dict(self.attributes)
        for key in op.removed:
            attributes.pop(key, None)
        for key in op.changed:
            attributes[key] = op.attributes[key]
        if attributes == op.attributes and type(op.attributes) is dict:
            attributes = op.attributes
        return Held(
            self.username,
            attributes,
            op.ip if op.ip is not None else self.ip,
            op.user_agent if op.user_agent is not None else self.user_agent,
            min(self.created_at, op.created_at),
            max(self.last_accessed_at, op.last_accessed_at),
            max(self.expires_at, op.expires_at),
            self.absolute_expires_at,
        )

    def expired(self, now: float) -> bool:
        """True when the idle or the absolute expiry has passed."""
        return expiry_passed(self.expires_at, self.absolute_expires_at, now)

    def same_creation(self, username: str, created_at: float) -> bool:
        """True when this is the session created for ``username`` at ``created_at`` (see
        `codec.same_creation`)."""
        return self.created_at == created_at and self.username == username

    def record(self) -> Record:
        """The session as a store hands it out, attributes decoded."""
        return self._record({key: json.loads(text) for key, text in self.attributes.items()})

    def _record(self, attributes: dict[str, Any]) -> Record:
        return {
            "username": self.username,
            "attributes": attributes,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "created_at": self.created_at,
            "last_accessed_at": self.last_accessed_at,
            "expires_at": self.expires_at,
            "absolute_expires_at": self.absolute_expires_at,
        }

    def member(self, session_id: str) -> str:
        """The ``"id":record`` member of a file document, as `codec.encode_record` writes
        the decoded record, built from the texts held."""
        text = encode_value
        attributes = ",".join([f"{text(key)}:{value}" for key, value in self.attributes.items()])
        return document_member(
            session_id,
            f'{{"username":{text(self.username)},"attributes":{{{attributes}}},'
            f'"ip":{text(self.ip)},"user_agent":{text(self.user_agent)},'
            f'"created_at":{text(self.created_at)},'
            f'"last_accessed_at":{text(self.last_accessed_at)},'
            f'"expires_at":{text(self.expires_at)},'
            f'"absolute_expires_at":{text(self.absolute_expires_at)}}}',
        )


class Loaded(Held):
    """A session read from a file: its attributes kept as parsed (decoded) until a write
    merges into it: most records of a large file are read and never changed, and encoding
    them all would add about half to the time a reopen takes."""

    __slots__ = ()

    def merged(self, op: Upsert) -> Held:
        return Held.of_record(self._record(encode_stored(self.attributes))).merged(op)

    def record(self) -> Record:
        return self._record(dict(self.attributes))

    def member(self, session_id: str) -> str:
        return document_member(session_id, encode_record(self.record()))
