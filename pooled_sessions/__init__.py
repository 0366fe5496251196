"""pooled_sessions: server-side sessions kept in a bounded pool and written behind in batches."""

from __future__ import annotations

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
from .pool import SessionPoolConfig
from .service import SessionService

__version__ = "0.1.0"

__all__ = [
    "BackPressureError",
    "ClientInfo",
    "ConfigError",
    "CorruptStoreError",
    "MissingDependencyError",
    "PoolExhaustedError",
    "Reason",
    "ServiceClosedError",
    "Session",
    "SessionDataError",
    "SessionError",
    "SessionPoolConfig",
    "SessionService",
    "Settings",
    "ShutdownReport",
    "StoreError",
    "StoreUnavailableError",
    "ValidationResult",
    "__version__",
]
