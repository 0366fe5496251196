"""The session pool: `SessionPool`, a thread-safe bounded pool (its configuration is in `config`).

The rules (limits, waiter order, idle list, statistics) live in `engine.pool_policy`, shared with
the services' engine; `SessionPool` only adds a lock and blocking waits.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, overload

from pooled_sessions.codec import check_id, check_username, encode_attributes
from pooled_sessions.config import SessionPoolConfig
from pooled_sessions.engine.pool_policy import AcquireSlot, PoolPolicy, PoolStats, await_ticket
from pooled_sessions.errors import ConfigError, ServiceClosedError


def wait_for_grant(lock: threading.Lock, request: AcquireSlot) -> None:
    """Answer an `AcquireSlot` with threads: block (``lock`` held) until granted or timed out."""
    ticket = request.ticket
    granted = threading.Condition(lock)
    ticket.waker = granted.notify
    granted.wait_for(lambda: ticket.granted, request.timeout)


class Poolable(Protocol):
    """What `SessionPool` needs of the objects it lends."""

    def is_valid(self, now: float) -> bool: ...

    def expired(self, now: float) -> bool: ...

    def reset(self) -> None: ...


class PooledSession:
    """A mutable session object, wiped by `reset` before it is lent again."""

    __slots__ = (
        "session_id",
        "username",
        "attributes",
        "ip",
        "user_agent",
        "created_at",
        "last_accessed_at",
        "expires_at",
        "invalid",
    )

    session_id: str | None
    username: str | None
    attributes: dict[str, str]
    ip: str | None
    user_agent: str | None
    created_at: float
    last_accessed_at: float
    expires_at: float | None
    invalid: bool

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: a returned object never shows its last user's data."""
        self.session_id = self.username = self.ip = self.user_agent = None
        self.attributes = {}
        self.created_at = self.last_accessed_at = 0.0
        self.expires_at = None
        self.invalid = False

    def open(
        self,
        username: str,
        expire_seconds: float,
        *,
        now: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        session_id: str | None = None,
    ) -> PooledSession:
        """Fill a blank object for a new login; returns it."""
        now = time.time() if now is None else now
        self.session_id = secrets.token_urlsafe(32) if session_id is None else check_id(session_id)
        self.username = check_username(username)
        self.attributes = encode_attributes({} if attributes is None else attributes)
        self.ip, self.user_agent = ip, user_agent
        self.created_at = self.last_accessed_at = now
        self.expires_at = now + expire_seconds
        return self

    def touch(self, now: float, expire_seconds: float) -> None:
        """Record an access and push the idle expiry out."""
        self.last_accessed_at = now
        self.expires_at = now + expire_seconds

    def invalidate(self) -> None:
        """Mark the object unusable: the pool discards it when it comes back."""
        self.invalid = True

    def expired(self, now: float) -> bool:
        """True once an opened session's expiry has passed (a blank object never expires)."""
        return self.expires_at is not None and self.expires_at <= now

    def is_valid(self, now: float) -> bool:
        """True when the object may be lent or kept: not invalidated, not expired."""
        return not self.invalid and not self.expired(now)


class MaintainReport(NamedTuple):
    """What one `SessionPool.maintain` pass did."""

    evicted: int
    trimmed: int
    created: int


P = TypeVar("P", bound=Poolable)


class SessionPool(Generic[P]):
    """A bounded, thread-safe pool of session objects, with Commons Pool semantics.

    At most ``max_total`` objects are out on loan; `borrow_session` past that blocks up to
    ``max_wait`` seconds, first come first served, then raises `PoolExhaustedError`.
    Objects failing validation on borrow or return (``test_on_borrow``/``test_on_return``)
    are discarded; returned objects are `reset` and kept idle up to ``max_idle``.
    """

    @overload
    def __init__(
        self: SessionPool[PooledSession],
        config: SessionPoolConfig | None = None,
        *,
        clock: Callable[[], float] = ...,
        monotonic: Callable[[], float] = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        config: SessionPoolConfig | None = None,
        *,
        factory: Callable[[], P],
        clock: Callable[[], float] = ...,
        monotonic: Callable[[], float] = ...,
    ) -> None: ...

    def __init__(
        self,
        config: SessionPoolConfig | None = None,
        *,
        factory: Callable[[], Any] = PooledSession,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if config is not None and not isinstance(config, SessionPoolConfig):
            raise ConfigError(f"config must be a SessionPoolConfig, not {type(config).__name__}")
        self.config = config or SessionPoolConfig()
        self._factory: Callable[[], P] = factory
        self._clock, self._mono = clock, monotonic
        self._policy: PoolPolicy[P] = PoolPolicy(
            self.config, max_idle=self.config.max_idle, min_idle=self.config.min_idle
        )
        self._lock = threading.Lock()
        self._lent: dict[int, P] = {}
        self._evicted: dict[int, P] = {}
        self._closed = False

    def borrow_session(self, timeout: float | None = None) -> P:
        """Lend an object: an idle one if any passes validation, else a new one.

        Waits up to ``timeout`` (default ``max_wait``) seconds for a free slot, then
        raises `PoolExhaustedError`.
        """
        wait = self.config.max_wait if timeout is None else timeout
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise ValueError(f"timeout must be a number >= 0, got {timeout!r}")
        with self._lock:
            self._check_open()
            self._acquire(wait)
            try:
                obj = self._take_idle()
            except BaseException:
                self._policy.release(self._mono())
                raise
            if obj is not None:
                self._lent[id(obj)] = obj
                return obj
        try:  # the slot is ours: build the object outside the lock
            obj = self._factory()
        except BaseException:
            with self._lock:
                self._policy.release(self._mono())
            raise
        with self._lock:
            self._policy.created += 1
            self._lent[id(obj)] = obj
        return obj

    def return_session(self, obj: P) -> bool:
        """Give an object back; True if it was kept for reuse, False if discarded.

        An object the pool evicted while it was out is accepted and discarded.
        """
        with self._lock:
            key = id(obj)
            if self._lent.get(key) is not obj:
                if self._evicted.get(key) is obj:
                    del self._evicted[key]
                    return False
                raise ValueError(
                    "return_session: object was not borrowed from this pool, "
                    "or was already returned"
                )
            del self._lent[key]
            self._policy.release(self._mono())
            if self._closed or (self.config.test_on_return and not obj.is_valid(self._clock())):
                self._policy.discarded += 1
                return False
            try:
                obj.reset()
            except BaseException:
                self._policy.discarded += 1
                raise
            if not self._policy.push_idle(obj):
                self._policy.discarded += 1
                return False
            return True

    def maintain(self) -> MaintainReport:
        """Evict expired objects on loan; trim idle ones to ``max_idle``, add up to ``min_idle``."""
        with self._lock:
            now = self._clock()
            expired = [obj for obj in self._lent.values() if obj.expired(now)]
            for obj in expired:
                self._evict(obj)
            trimmed = len(self._policy.trim_idle())
            self._policy.discarded += trimmed
            shortfall = 0 if self._closed else self._policy.idle_shortfall()
        fresh = [self._factory() for _ in range(shortfall)]
        with self._lock:
            for obj in fresh:
                self._policy.created += 1
                if (
                    self._closed
                    or not self._policy.idle_shortfall()
                    or not self._policy.push_idle(obj)
                ):
                    self._policy.discarded += 1
        return MaintainReport(len(expired), trimmed, len(fresh))

    def get_stats(self) -> PoolStats:
        """created, borrowed, returned, discarded, evicted, timeouts, active, idle, waiting,
        and the mean and max wait of a borrow."""
        with self._lock:
            return self._policy.stats()

    def close(self) -> None:
        """Discard idle objects and refuse further borrows; objects out may still be returned."""
        with self._lock:
            self._closed = True
            self._policy.discarded += len(self._policy.drain_idle())

    def __enter__(self) -> SessionPool[P]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosedError("the session pool was closed")

    def _acquire(self, wait: float) -> None:
        ticket = self._policy.request(self._mono())
        if ticket.granted:
            return
        op = await_ticket(self._policy, ticket, self._mono, wait)
        try:
            for request in op:
                wait_for_grant(self._lock, request)
        finally:
            op.close()

    def _take_idle(self) -> P | None:
        now = self._clock()
        while (obj := self._policy.pop_idle()) is not None:
            if not self.config.test_on_borrow or obj.is_valid(now):
                return obj
            self._policy.discarded += 1
        return None

    def _evict(self, obj: P) -> None:
        del self._lent[id(obj)]
        self._evicted[id(obj)] = obj
        if len(self._evicted) > self.config.max_total:  # forget the oldest never returned
            del self._evicted[next(iter(self._evicted))]
        self._policy.release(self._mono(), evicted=True)
        self._policy.discarded += 1
