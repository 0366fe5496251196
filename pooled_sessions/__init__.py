"""pooled_sessions: server-side sessions kept in a bounded pool and written behind in batches."""

from __future__ import annotations

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
from .model import ClientInfo, Reason, Session, ShutdownReport, ValidationResult
from .pool import PooledSession, SessionPool, SessionPoolConfig
from .poolpolicy import PoolStats
from .service import SessionService

__version__ = "0.1.0"

__all__ = [
    "BackPressureError",
    "ClientIPResolver",
    "ClientInfo",
    "ConfigError",
    "CorruptStoreError",
    "MissingDependencyError",
    "PoolExhaustedError",
    "PoolStats",
    "PooledSession",
    "Reason",
    "ServiceClosedError",
    "Session",
    "SessionDataError",
    "SessionError",
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
