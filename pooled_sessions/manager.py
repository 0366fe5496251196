"""SessionManager: the user-centric facade (login, logout, is_valid_session) over a service.

Each operation is written once, as a generator yielding the service calls it needs
(`Call`); `SessionManager` runs it against a `SessionService`, `AsyncSessionManager`
awaits the same calls on an `AsyncSessionService`. What a login does to the user's other
sessions is decided by the pure `decide_login`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pooled_sessions.codec import check_id, check_username, is_valid_id
from pooled_sessions.engine.logins import (
    LiveLogin,
    LocationEvent,
    LocationPolicy,
    LoginPolicy,
    decide_login,
    location_event,
)
from pooled_sessions.errors import ConfigError, PoolExhaustedError
from pooled_sessions.model import ClientInfo, Session, ValidationResult
from pooled_sessions.service_calls import Call, Flow, adrive, drive

T = TypeVar("T")
logger = logging.getLogger("session_service")
Listener = Callable[[LocationEvent], Any]
_STRIPES = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginResult:
    """The outcome of a login (`SessionManager.login`, `sign_in`); truthy when the user is
    logged in.

    ``session_id`` is the id to hand the client, always one the library minted, never the
    id passed in: the caller's live session of this user moved to a new id (``rotated``,
    its data kept), or a fresh session. None when the login was refused.
    ``reason``: ``"ok"``, ``"other_location"``, ``"too_many_sessions"`` or ``"pool_exhausted"``.
    """

    ok: bool
    session_id: str | None
    reason: str
    rotated: bool = False
    ended: tuple[str, ...] = ()
    event: LocationEvent | None = None

    def __bool__(self) -> bool:
        return self.ok


class _Manager:
    """What both managers share: the policy, the listener, and the operations as flows."""

    def __init__(
        self,
        service: Any,
        policy: LoginPolicy | LocationPolicy | str | None = None,
        *,
        on_location_change: Listener | None = None,
        **options: Any,
    ) -> None:
        if isinstance(policy, LoginPolicy):
            if options:
                raise ConfigError("give a LoginPolicy or policy options, not both")
            self.policy = policy
        else:
            fields = dict(options)
            if policy is not None:
                fields["on_new_location"] = policy
            try:
                self.policy = LoginPolicy(**fields)
            except TypeError as exc:
                raise ConfigError(f"unknown SessionManager option: {exc}") from None
        if on_location_change is not None and not callable(on_location_change):
            raise ConfigError("on_location_change must be callable")
        self.service = service
        self.on_location_change = on_location_change

    def _sign_in(
        self,
        user: str,
        session_id: str | None,
        *,
        ip: str | None,
        user_agent: str | None,
        attributes: Mapping[str, Any] | None,
    ) -> Flow[LoginResult]:
        """Log ``user`` in; the session ends up on an id the library minted, so an id an
        attacker planted in the victim's browser never becomes an authenticated one."""
        check_username(user)
        current: Session | None = None
        if session_id is not None:
            current = yield Call("get_session", (check_id(session_id),))
        client = ClientInfo(ip=ip, user_agent=user_agent)
        others = yield from self._others(user, session_id)
        decision = decide_login(others, client.ip, self.policy)
        event = location_event(user, client.ip, decision, self.policy)
        if not decision.allowed:
            return LoginResult(ok=False, session_id=None, reason=decision.reason, event=event)
        for sid in decision.end:
            yield Call("end_session", (sid,))
        new_id, rotated = yield from self._minted(user, current, attributes, client)
        return LoginResult(
            ok=new_id is not None,
            session_id=new_id,
            reason="ok" if new_id is not None else "pool_exhausted",
            rotated=rotated,
            ended=decision.end,
            event=event,
        )

    def _others(self, user: str, session_id: str | None) -> Flow[list[LiveLogin]]:
        """The user's live sessions other than the caller's, for the login policy."""
        others = []
        for sid in (yield Call("sessions_of", (user,))):
            session: Session | None = (
                None if sid == session_id else (yield Call("get_session", (sid,)))
            )
            if session is not None:
                others.append(LiveLogin(sid, session.ip, session.created_at))
        return others

    def _minted(
        self,
        user: str,
        current: Session | None,
        attributes: Mapping[str, Any] | None,
        client: ClientInfo,
    ) -> Flow[tuple[str | None, bool]]:
        """The id a login ends up on, and whether it kept data: the caller's live session of
        ``user``, or its anonymous one (a cart before login), rotated and bound to ``user``;
        else a fresh session (None when the pool is full)."""
        if current is not None and current.username in (user, None):
            bind = {"username": user, "attributes": attributes}
            rotated: str | None = yield Call("rotate_session", (current.session_id,), bind)
            if rotated is not None:
                return rotated, True
        elif current is not None:  # never hand one user's data to another
            yield Call("end_session", (current.session_id,))
        try:
            fresh: str = yield Call("create_session", (user, attributes, client))
        except PoolExhaustedError:
            return None, False
        return fresh, False

    def _logout(self, user: str) -> Flow[int]:
        check_username(user)
        ended = 0
        for sid in (yield Call("sessions_of", (user,))):
            ended += bool((yield Call("end_session", (sid,))))
        return ended

    def _is_valid(self, user: str, session_id: str, ip: str | None) -> Flow[bool]:
        if not isinstance(user, str) or not isinstance(session_id, str):
            raise TypeError("user and session_id must be str")
        if not is_valid_id(session_id):
            return False
        session: Session | None = yield Call("get_session", (session_id,))
        if session is None or session.username != user:  # checked before touching it
            return False
        client = None if ip is None else ClientInfo(ip=ip)
        result: ValidationResult = yield Call("validate_session", (session_id, client))
        return result.valid and result.session is not None and result.session.username == user

    def _report(self, result: LoginResult) -> Any:
        event = result.event
        if event is None:
            return None
        logger.warning(
            "login of %r from %s while active from %s: %s",
            event.username,
            event.new_ip,
            ", ".join(event.old_ips) or "unknown",
            event.action,
        )
        if self.on_location_change is None:
            return None
        try:
            return self.on_location_change(event)
        except Exception:  # a listener's bug must not undo a completed login
            logger.exception("on_location_change listener failed")
            return None

    @staticmethod
    def _stripe(user: str) -> int:
        digest = hashlib.blake2b(user.encode("utf-8", "surrogatepass"), digest_size=2).digest()
        return int.from_bytes(digest, "big") % _STRIPES


def _exclusive(service: Any, user: str) -> Any:
    """The service's hold on ``user`` across app servers (``service.exclusive``), if any:
    a context manager (an async one for an asyncio service) that serialises logins of one
    user on every server sharing the store, so the login policy holds across them."""
    exclusive = getattr(service, "exclusive", None)
    return contextlib.nullcontext() if exclusive is None else exclusive(user)


class SessionManager(_Manager):
    """Logins, logouts and session checks per user, over a `SessionService`. Thread-safe.

    ``SessionManager(service, "allow", ipv4_prefix=24, max_sessions_per_user=3,
    on_location_change=callback)``: the policy (``"end_older"`` by default, ``"allow"``,
    ``"refuse"``) or a `LoginPolicy`, and the listener told of logins from elsewhere.
    Logins of one user are serialised in this process.
    """

    def __init__(
        self,
        service: Any,
        policy: LoginPolicy | LocationPolicy | str | None = None,
        *,
        on_location_change: Listener | None = None,
        **options: Any,
    ) -> None:
        super().__init__(service, policy, on_location_change=on_location_change, **options)
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def login(self, user: str, session_id: str | None, ip: str | None = None) -> LoginResult:
        """Log ``user`` in from ``ip``; ``session_id`` is the session the request came with
        (None: none). Falsy when refused or the pool is full; else ``.session_id`` is the
        id the client must use from now on (never the one passed in)."""
        return self.sign_in(user, session_id, ip)

    def sign_in(
        self,
        user: str,
        session_id: str | None,
        ip: str | None = None,
        *,
        user_agent: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> LoginResult:
        """`login` with the client's user agent, and the attributes a fresh session starts with
        (a rotated session keeps its own)."""
        with self._locks[self._stripe(user)], _exclusive(self.service, user):
            result = self._run(
                self._sign_in(user, session_id, ip=ip, user_agent=user_agent, attributes=attributes)
            )
        self._report(result)
        return result

    def logout(self, user: str) -> int:
        """End every live session of ``user``; returns how many ended."""
        with self._locks[self._stripe(user)]:
            return self._run(self._logout(user))

    def is_valid_session(self, user: str, session_id: str, ip: str | None = None) -> bool:
        """True when ``session_id`` is a live session of ``user`` (and touches it)."""
        return self._run(self._is_valid(user, session_id, ip))

    def _run(self, flow: Flow[T]) -> T:
        return drive(self.service, flow)


class AsyncSessionManager(_Manager):
    """`SessionManager` for an `AsyncSessionService`: the same operations, as coroutines."""

    def __init__(
        self,
        service: Any,
        policy: LoginPolicy | LocationPolicy | str | None = None,
        *,
        on_location_change: Listener | None = None,
        **options: Any,
    ) -> None:
        super().__init__(service, policy, on_location_change=on_location_change, **options)
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]

    async def login(self, user: str, session_id: str | None, ip: str | None = None) -> LoginResult:
        """See `SessionManager.login`."""
        return await self.sign_in(user, session_id, ip)

    async def sign_in(
        self,
        user: str,
        session_id: str | None,
        ip: str | None = None,
        *,
        user_agent: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> LoginResult:
        """See `SessionManager.sign_in`; an async listener is awaited."""
        async with self._locks[self._stripe(user)], _exclusive(self.service, user):
            result = await self._run(
                self._sign_in(user, session_id, ip=ip, user_agent=user_agent, attributes=attributes)
            )
        outcome = self._report(result)
        if inspect.isawaitable(outcome):
            try:
                await outcome
            except Exception:
                logger.exception("on_location_change listener failed")
        return result

    async def logout(self, user: str) -> int:
        """See `SessionManager.logout`."""
        async with self._locks[self._stripe(user)]:
            return await self._run(self._logout(user))

    async def is_valid_session(self, user: str, session_id: str, ip: str | None = None) -> bool:
        """See `SessionManager.is_valid_session`."""
        return await self._run(self._is_valid(user, session_id, ip))

    async def _run(self, flow: Flow[T]) -> T:
        return await adrive(self.service, flow)
