"""pooled_sessions: server-side sessions kept in a bounded pool and written behind in batches."""

from __future__ import annotations

from .aio import AsyncSessionService
from .client_ip import ClientIPResolver, client_ip
from .config import Settings
from .errors import (
    BackPressureError,
    ConfigError,
    CorruptStoreError,
    MissingDependencyError,
    PoolExhaustedError,
    ServiceClosedError,
    SessionDataError,
    SessionError,
    StoreError,
    StoreUnavailableError,
)
from .logins import LocationEvent, LocationPolicy, LoginPolicy
from .manager import AsyncSessionManager, LoginResult, SessionManager
from .model import ClientInfo, Reason, Session, ShutdownReport, ValidationResult
from .pool import PooledSession, SessionPool, SessionPoolConfig
from .poolpolicy import PoolStats
from .service import SessionService

__version__ = "0.1.0"

__all__ = [
    "AsyncSessionService",
    "AsyncSessionManager",
    "BackPressureError",
    "ClientIPResolver",
    "ClientInfo",
    "ConfigError",
    "CorruptStoreError",
    "LocationEvent",
    "LocationPolicy",
    "LoginPolicy",
    "LoginResult",
    "MissingDependencyError",
    "PoolExhaustedError",
    "PoolStats",
    "PooledSession",
    "Reason",
    "ServiceClosedError",
    "Session",
    "SessionDataError",
    "SessionError",
    "SessionManager",
    "SessionPool",
    "SessionPoolConfig",
    "SessionService",
    "Settings",
    "ShutdownReport",
    "StoreError",
    "StoreUnavailableError",
    "ValidationResult",
    "__version__",
    "client_ip",
]
