"""Public value types: Session, ClientInfo, ValidationResult and the validation reasons."""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pooled_sessions.codec import short_id
from pooled_sessions.storable import check_text
from pooled_sessions.text_pool import TextPool

MAX_USER_AGENT_LENGTH = 1024
SHARED_USER_AGENTS = 512
"""Distinct user agents kept for sharing: the sessions of one browser build hold one copy
of its user agent rather than one each."""
_user_agents = TextPool(SHARED_USER_AGENTS)


def shared_user_agent(text: str | None) -> str | None:
    """``text``, or an equal string another session already holds (see `SHARED_USER_AGENTS`)."""
    return None if text is None else _user_agents.share(text)


class Reason(StrEnum):
    """Why `validate_session` accepted or refused a session."""

    OK = "ok"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    CLIENT_MISMATCH = "client_mismatch"
    INVALID_ID = "invalid_id"


@functools.lru_cache(maxsize=4096)  # every request names its client: most come back
def _canonical_ip(text: str) -> str:
    """``text`` as `ipaddress` writes it; ValueError if it is no address."""
    return str(ipaddress.ip_address(text.strip()))


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request came from: the client's address and user agent, both optional."""

    ip: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        if self.ip is not None:
            if not isinstance(self.ip, str):
                raise TypeError(f"client ip must be a str, not {type(self.ip).__name__}")
            try:
                canonical = _canonical_ip(self.ip)
            except ValueError:
                raise ValueError(f"client ip {self.ip[:64]!r} is not an IP address") from None
            object.__setattr__(self, "ip", check_text(canonical, "client ip"))
        if self.user_agent is not None:
            if not isinstance(self.user_agent, str):
                raise TypeError(
                    f"client user_agent must be a str, not {type(self.user_agent).__name__}"
                )
            check_text(self.user_agent, "client user_agent")
            agent = shared_user_agent(str(self.user_agent[:MAX_USER_AGENT_LENGTH]))
            object.__setattr__(self, "user_agent", agent)

    @classmethod
    def coerce(cls, value: ClientInfo | Mapping[str, Any] | None) -> ClientInfo | None:
        """Accept a ClientInfo, a mapping with ``ip`` / ``user_agent`` keys, or None."""
        if value is None or isinstance(value, ClientInfo):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"client_info must be a ClientInfo or a mapping, not {type(value).__name__}"
            )
        unknown = set(value) - {"ip", "user_agent"}
        if unknown:
            raise ValueError(f"client_info has unknown keys: {sorted(map(str, unknown))}")
        return cls(ip=value.get("ip"), user_agent=value.get("user_agent"))


class Session:
    """A read-only snapshot of one session.

    Attributes are decoded on first access from the JSON captured at snapshot time, so
    taking a snapshot is cheap and mutating the returned dict never changes the store:
    use ``update_session`` for that.
    """

    __slots__ = (
        "session_id",
        "username",
        "ip",
        "user_agent",
        "created_at",
        "last_accessed_at",
        "expires_at",
        "absolute_expires_at",
        "_encoded",
        "_decoded",
    )

    session_id: str
    username: str | None
    """The user the session belongs to; None for an anonymous one (a visitor before login)."""
    ip: str | None
    user_agent: str | None
    created_at: float
    last_accessed_at: float
    expires_at: float
    absolute_expires_at: float | None

    def __init__(
        self,
        *,
        session_id: str,
        username: str | None,
        encoded_attributes: Mapping[str, str],
        ip: str | None,
        user_agent: str | None,
        created_at: float,
        last_accessed_at: float,
        expires_at: float,
        absolute_expires_at: float | None = None,
    ) -> None:
        self.session_id = session_id
        self.username = username
        self.ip = ip
        self.user_agent = user_agent
        self.created_at = created_at
        self.last_accessed_at = last_accessed_at
        self.expires_at = expires_at
        self.absolute_expires_at = absolute_expires_at
        self._encoded = encoded_attributes
        self._decoded: dict[str, Any] | None = None

    @property
    def attributes(self) -> dict[str, Any]:
        """The session's attributes, decoded into a dict that belongs to this snapshot."""
        if self._decoded is None:
            self._decoded = {key: json.loads(text) for key, text in self._encoded.items()}
        return self._decoded

    @property
    def client(self) -> ClientInfo:
        """The client the session was created for."""
        return ClientInfo(self.ip, self.user_agent)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _COMPARED)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Session(session_id={short_id(self.session_id)!r}, username={self.username!r}, "
            f"attributes={self.attributes!r}, ip={self.ip!r}, expires_at={self.expires_at!r})"
        )


class SessionFields(Protocol):
    """What `snapshot` copies: a session's fields, its attributes JSON-encoded."""

    @property
    def session_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def created_at(self) -> float: ...
    @property
    def last_accessed_at(self) -> float: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def absolute_expires_at(self) -> float | None: ...


_blank = object.__new__


def snapshot(source: SessionFields) -> Session:
    """A `Session` holding ``source``'s current fields.

    Every valid `validate_session` takes one, so the slots are set directly: keyword
    arguments to `Session` would cost a sixth of the call.
    """
    session: Session = _blank(Session)
    session.session_id = source.session_id
    session.username = source.username or None  # stored as "" (ANONYMOUS)
    session.ip = source.ip
    session.user_agent = source.user_agent
    session.created_at = source.created_at
    session.last_accessed_at = source.last_accessed_at
    session.expires_at = source.expires_at
    session.absolute_expires_at = source.absolute_expires_at
    session._encoded = source.attributes
    session._decoded = None
    return session


_COMPARED = (
    "session_id",
    "username",
    "attributes",
    "ip",
    "user_agent",
    "created_at",
    "last_accessed_at",
    "expires_at",
    "absolute_expires_at",
)


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The outcome of `validate_session`; truthy exactly when the session is valid.

    ``client_changed`` is set when the request's client differs from the session's and
    the binding policy is ``report`` (the session stays valid; the caller decides).
    """

    valid: bool
    reason: Reason
    session: Session | None = None
    client_changed: bool = False

    def __bool__(self) -> bool:
        return self.valid


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What `shutdown` managed to write, and the (shortened) ids it could not.

    ``unwritten_ends``: those of ``unsaved`` that are ends (logouts) the store never got;
    they are lost with the process, and their sessions stay valid until they expire.
    """

    written: int
    unsaved: tuple[str, ...] = ()
    error: str | None = None
    unwritten_ends: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when nothing was left unwritten."""
        return not self.unsaved
