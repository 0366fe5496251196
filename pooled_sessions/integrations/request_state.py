"""What a web request does with its session, decided once for every framework (no I/O).

A request opens its session from the cookie's id (`opening`); the view reads and changes a
plain dict; when the response is built, `closing` names the few service calls that make
the store hold what the view left: none for a request that changed nothing, one for a
change, a login or a logout. Each framework module runs these flows on its own service
(`drive` for a blocking one, `adrive` for asyncio), so no decision exists twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from pooled_sessions.codec import check_username, encode_attributes
from pooled_sessions.config import Settings
from pooled_sessions.engine.engine import ClientLike
from pooled_sessions.model import ValidationResult
from pooled_sessions.service_calls import Call, Flow, adrive, drive

__all__ = [
    "Call",
    "CookieUpdate",
    "RequestSession",
    "adrive",
    "changes",
    "closing",
    "cookie_update",
    "drive",
    "max_age",
    "opening",
]

S = TypeVar("S", bound="RequestSession")


class RequestSession(dict[str, Any]):
    """One request's session: a dict, plus the id and user it was loaded with.

    What changed is found by comparing with what was loaded when the response is built,
    so a value changed in place (``session["cart"].append(3)``) is saved too, and a key
    set back to its loaded value costs no write.
    """

    def __init__(
        self,
        session_id: str | None = None,
        username: str | None = None,
        loaded: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
        absolute_expires_at: float | None = None,
    ) -> None:
        super().__init__(attributes or {})
        self.session_id = session_id
        self.username = username
        self.absolute_expires_at = absolute_expires_at
        self._loaded: Mapping[str, str] = loaded or {}
        self._login: str | None = None
        self._rotate = False
        self._logout = False

    @property
    def new(self) -> bool:
        """True when the store holds no session for this request (yet)."""
        return self.session_id is None

    def login(self, username: str | None) -> None:
        """Give the session a new id when the response is built (never the old one), bound to
        ``username`` (None: a new id alone, as Django's ``cycle_key``)."""
        self._login = None if username is None else check_username(username)
        self._rotate = True

    def logout(self) -> None:
        """End the session everywhere when the response is built, and empty it now."""
        self._logout = True
        self._login = None
        self._rotate = False
        self.absolute_expires_at = None
        self.clear()


def changes(
    loaded: Mapping[str, str], current: Mapping[str, Any]
) -> tuple[dict[str, Any], set[str]]:
    """The values to write and the keys to remove to turn ``loaded`` (encoded) into ``current``."""
    encoded = encode_attributes(current)
    changed = {key: current[key] for key, text in encoded.items() if loaded.get(key) != text}
    return changed, {key for key in loaded if key not in encoded}


@overload
def opening(cookie: str | None, client: ClientLike = None) -> Flow[RequestSession]: ...


@overload
def opening(cookie: str | None, client: ClientLike, kind: type[S]) -> Flow[S]: ...


def opening(
    cookie: str | None, client: ClientLike = None, kind: type[RequestSession] = RequestSession
) -> Flow[RequestSession]:
    """The session a request's cookie names, or a new empty one when it names no live session
    (the client's value is never adopted: a new session gets a new id). ``kind`` is the
    class to build, a framework's subclass of `RequestSession`."""
    if not cookie:
        return kind()
    result: ValidationResult = yield Call("validate_session", (cookie, client))
    session = result.session
    if not result.valid or session is None:
        return kind()
    return kind(
        session.session_id,
        session.username,
        session._encoded,
        session.attributes,
        session.absolute_expires_at,
    )


def closing(session: RequestSession, client: ClientLike = None) -> Flow[str | None]:
    """Make the store hold what the request left in ``session``; returns the id the cookie
    must carry, or None when the request ends with no stored session (no cookie, or delete
    the one the client sent)."""
    sid = session.session_id
    loaded = session._loaded
    if session._logout and sid is not None:
        yield Call("end_session", (sid,))
        sid, loaded = None, {}
    if sid is None:
        if not session and session._login is None:
            return None
        return (yield from _created(session, client))
    changed, removed = changes(loaded, session)
    if session._rotate:
        rotated = yield Call(
            "rotate_session",
            (sid,),
            {"username": session._login, "attributes": changed, "remove": removed},
        )
        if rotated is None:  # ended elsewhere during the request: log in afresh
            return (yield from _created(session, client))
        return str(rotated)
    if changed or removed:
        updated = yield Call("update_session", (sid, changed), {"remove": removed})
        if not updated:  # ended elsewhere during the request (a logout everywhere)
            return None
    return sid


def _created(session: RequestSession, client: ClientLike) -> Flow[str]:
    """Store ``session`` as a new session (its clocks start now); its new id."""
    session.absolute_expires_at = None
    created = yield Call("create_session", (session._login, dict(session)), {"client_info": client})
    return str(created)


def max_age(settings: Settings, absolute_expires_at: float | None, now: float) -> int:
    """The cookie's ``Max-Age``, whole seconds: the idle timeout the session slides to, cut
    at its absolute expiry (a session created by this request starts both clocks now)."""
    seconds = settings.expire_minutes * 60.0
    lifetime = settings.absolute_lifetime_minutes
    if absolute_expires_at is not None:
        seconds = min(seconds, absolute_expires_at - now)
    elif lifetime is not None:
        seconds = min(seconds, lifetime * 60.0)
    return max(0, math.floor(seconds))


@dataclass(frozen=True, slots=True)
class CookieUpdate:
    """What a response does with the session cookie: set it to ``value`` for ``max_age``
    seconds, or delete it (``value`` None)."""

    value: str | None
    max_age: int = 0


def cookie_update(
    settings: Settings,
    session: RequestSession,
    sent: str | None,
    sid: str | None,
    now: float,
    *,
    refresh: bool = True,
) -> CookieUpdate | None:
    """The cookie change a response carries once `closing` returned ``sid``: none when
    nothing is to be said (``refresh=False`` keeps an unchanged id's cookie as it is)."""
    if sid is None:
        return CookieUpdate(None) if sent else None
    if sid == sent and not refresh:
        return None
    return CookieUpdate(sid, max_age(settings, session.absolute_expires_at, now))
