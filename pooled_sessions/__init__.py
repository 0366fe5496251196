"""pooled_sessions: server-side sessions kept in a bounded pool and written behind in batches."""

from __future__ import annotations

from pooled_sessions.client_ip import ClientIPResolver, client_ip
from pooled_sessions.config import PoolLimits, SessionPoolConfig, Settings
from pooled_sessions.engine.logins import LocationEvent, LocationPolicy, LoginPolicy
from pooled_sessions.engine.pool_policy import PoolStats
from pooled_sessions.errors import (
    BackPressureError,
    ConfigError,
    CorruptStoreError,
    IdInUseError,
    MissingDependencyError,
    PoolExhaustedError,
    ServiceClosedError,
    SessionDataError,
    SessionError,
    StoreError,
    StoreUnavailableError,
)
from pooled_sessions.manager import AsyncSessionManager, LoginResult, SessionManager
from pooled_sessions.model import ClientInfo, Reason, Session, ShutdownReport, ValidationResult
from pooled_sessions.pool import PooledSession, SessionPool
from pooled_sessions.service import SessionService
from pooled_sessions.service_async import AsyncSessionService

__version__ = "0.1.0"

__all__ = [
    "AsyncSessionService",
    "AsyncSessionManager",
    "BackPressureError",
    "ClientIPResolver",
    "ClientInfo",
    "ConfigError",
    "CorruptStoreError",
    "IdInUseError",
    "LocationEvent",
    "LocationPolicy",
    "LoginPolicy",
    "LoginResult",
    "MissingDependencyError",
    "PoolExhaustedError",
    "PoolLimits",
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
