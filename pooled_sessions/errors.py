"""Exceptions raised by pooled_sessions, all under `SessionError`."""

from __future__ import annotations


class SessionError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(SessionError, ValueError):
    """A setting or store URL is invalid; the message names it."""


class SessionDataError(SessionError, ValueError):
    """Session data a store could not write, or would give back changed; the message names
    the field (an attribute and where in it, the username, the client's address or agent)."""


class StoreError(SessionError):
    """The store could not be read or written."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached (server down, directory not writable, ...)."""


class CorruptStoreError(StoreError):
    """The stored data cannot be parsed; it is left exactly as it was."""


class MissingDependencyError(SessionError, ImportError):
    """A store needs an optional dependency that is not installed."""


class BackPressureError(StoreError):
    """Too many changes are waiting for a store that keeps failing.

    Raised instead of growing the pending buffer without bound; nothing already
    accepted is dropped.
    """


class IdInUseError(SessionError):
    """A session id given to `create_session` belongs, or belonged, to another session."""


class PoolExhaustedError(SessionError):
    """No session slot became free within ``max_wait`` seconds."""


class ServiceClosedError(SessionError):
    """The service was shut down."""
