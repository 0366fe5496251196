"""Django sessions on pooled_sessions: ``SESSION_ENGINE = "pooled_sessions.integrations.django"``.

The store is named by the ``POOLED_SESSIONS = {"backend": ..., **settings}`` setting (any
other key is a `Settings` field). Each process opens one blocking `SessionService` at its
first request and shuts it down at exit; a forked worker (gunicorn) starts its own.

``django.contrib.auth.login`` and ``logout`` work unchanged: ``cycle_key`` gives the session
a new id when it is saved, bound to the user Django's auth stores under ``SESSION_KEY``
(a login is one commit), and ``flush`` ends the session everywhere at once. What a request
writes is decided in request_state.py, as for every framework.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pooled_sessions.errors import ConfigError
from pooled_sessions.integrations import missing
from pooled_sessions.integrations.request_state import (
    RequestSession,
    closing,
    drive,
    max_age,
    opening,
)
from pooled_sessions.service import SessionService

try:
    from asgiref.sync import sync_to_async
    from django.conf import settings as django_settings
    from django.contrib.auth import SESSION_KEY
    from django.contrib.sessions.backends.base import SessionBase, UpdateError
    from django.core.signals import setting_changed
    from django.utils import timezone
except ImportError as exc:
    raise missing("Django", "django") from exc

__all__ = ["SessionStore", "close_service", "get_service"]

_guard = threading.Lock()
_service: SessionService | None = None


def get_service() -> SessionService:
    """This process's `SessionService`, opened from ``settings.POOLED_SESSIONS`` at first use."""
    global _service
    with _guard:
        if _service is None:
            _service = _open_service()
        return _service


def close_service() -> None:
    """Shut this process's service down (at exit, or when ``POOLED_SESSIONS`` changes);
    the next request opens a new one."""
    global _service
    with _guard:
        service, _service = _service, None
    if service is not None:
        service.shutdown()


def _open_service() -> SessionService:
    options = getattr(django_settings, "POOLED_SESSIONS", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"POOLED_SESSIONS must be a dict, not {type(options).__name__}")
    options = dict(options)
    try:
        return SessionService(options.pop("backend", None), **options)
    except ConfigError as exc:
        raise ConfigError(f"POOLED_SESSIONS: {exc}") from exc


def _setting_changed(sender: object, *, setting: str, **kwargs: Any) -> None:
    if setting == "POOLED_SESSIONS":
        close_service()


def _forked() -> None:
    global _guard
    _guard = threading.Lock()  # a thread of the parent may have held it at fork()


setting_changed.connect(_setting_changed)
atexit.register(close_service)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class SessionStore(SessionBase):
    """Django's session engine over this process's `SessionService`.

    Keys a cookie names but the store does not hold are never adopted: such a session
    saves under a new id. A request that leaves the session as it was loaded writes
    nothing; one that changed it (in place too) writes its changes in one commit.
    """

    _session: dict[str, Any]  # Django's property: the data, loaded at first use
    _session_cache: dict[str, Any]

    def __init__(self, session_key: str | None = None) -> None:
        self._marked = False
        super().__init__(session_key)

    @property
    def modified(self) -> bool:
        """True when the response saves the session and sets its cookie again: Django's own
        flag, or a live session this request read (its cookie follows the sliding expiry,
        and a value changed in place is saved; an unchanged session writes nothing)."""
        cache = self.__dict__.get("_session_cache")
        return self._marked or (isinstance(cache, RequestSession) and not cache.new)

    @modified.setter
    def modified(self, value: bool) -> None:
        self._marked = value

    def load(self) -> dict[str, Any]:
        """The session the cookie names (touched); a key naming no live session is dropped."""
        session = drive(get_service(), opening(self._session_key))
        if session.new:
            self._session_key = None
        return session

    def exists(self, session_key: str) -> bool:
        """True if ``session_key`` names a live session (it is not touched)."""
        return get_service().get_session(session_key) is not None

    def create(self) -> None:
        """Store this session now as a new one, under a new id (even empty: Django's contract)."""
        self.save(must_create=True)

    def save(self, must_create: bool = False) -> None:
        """Write what this request changed, in one commit (none if nothing changed).

        ``must_create`` stores the data as a new session. Raises Django's `UpdateError`
        (a 400 from its middleware) when the session was ended elsewhere meanwhile.
        """
        session = self._request_session(new=must_create)
        user = session.get(SESSION_KEY)
        if user is not None and str(user) != session.username:
            session.login(str(user))
        service = get_service()
        sid = drive(service, closing(session))
        if sid is None:
            if not session.new:
                raise UpdateError
            # Django's middleware never saves an empty session; an explicit save stores it.
            sid = service.create_session(None, {})
        self._session_key = sid
        self.__dict__.pop("_session_cache", None)  # read again from the store if used again

    def delete(self, session_key: str | None = None) -> None:
        """End ``session_key`` (by default this session) everywhere, at once."""
        key = self._session_key if session_key is None else session_key
        if key is None:
            return
        ending = RequestSession(key)
        ending.logout()
        drive(get_service(), closing(ending))
        if key == self._session_key:  # what is left in memory saves as a new session
            self._session_cache = RequestSession(attributes=self.__dict__.get("_session_cache"))

    def clear(self) -> None:
        """Empty the session; its keys are removed from the store when it is saved."""
        self._request_session().clear()
        self.accessed = self.modified = True

    async def aflush(self) -> None:
        """`flush` for async views (``django.contrib.auth.alogout``), off the event loop."""
        await sync_to_async(self.flush)()

    def cycle_key(self) -> None:
        """Give the session a new id when it is saved, keeping its data (a login)."""
        self._request_session().login(None)
        self.modified = True

    async def acycle_key(self) -> None:
        """`cycle_key` for async views (``django.contrib.auth.alogin``), off the event loop."""
        await sync_to_async(self.cycle_key)()

    def get_session_cookie_age(self) -> int:
        """A new session's cookie age: the store's idle expiry, whole seconds."""
        return max_age(get_service().settings, None, time.time())

    def get_expiry_age(self, **kwargs: Any) -> int:
        """Seconds until the session expires if left idle: the store's sliding expiry, cut at
        its absolute expiry; ``modification`` (a datetime) is the moment to count from."""
        modification: datetime | None = kwargs.get("modification")
        now = time.time() if modification is None else modification.timestamp()
        cache = self.__dict__.get("_session_cache")
        absolute = cache.absolute_expires_at if isinstance(cache, RequestSession) else None
        return max_age(get_service().settings, absolute, now)

    def get_expiry_date(self, **kwargs: Any) -> datetime:
        """When the session expires if left idle (see `get_expiry_age`)."""
        modification: datetime = kwargs.get("modification") or timezone.now()
        return modification + timedelta(seconds=self.get_expiry_age(modification=modification))

    def set_expiry(self, value: datetime | timedelta | int | None) -> None:
        """None (the store's expiry) or 0 (the cookie ends with the browser); any other value
        raises `ConfigError`: the store's sliding expiry is set in ``POOLED_SESSIONS``."""
        super().set_expiry(_checked_expiry(value))

    async def aset_expiry(self, value: datetime | timedelta | int | None) -> None:
        """`set_expiry` for async views."""
        await super().aset_expiry(_checked_expiry(value))

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing to do: the store expires sessions by itself (``clearsessions`` is a no-op)."""

    def _request_session(self, new: bool = False) -> RequestSession:
        """This request's session as `closing` takes it (read from the store if not yet)."""
        current = self._session
        if new or not isinstance(current, RequestSession):
            current = RequestSession(attributes=current)
            self._session_cache = current
        return current


def _checked_expiry(value: datetime | timedelta | int | None) -> int | None:
    if value is None or (type(value) is int and value == 0):
        return value
    raise ConfigError(
        f"set_expiry({value!r}): a session lives as long as the store's sliding expiry "
        "(POOLED_SESSIONS expire_minutes and absolute_lifetime_minutes); set_expiry takes "
        "only None or 0 (a cookie that ends when the browser closes)"
    )
