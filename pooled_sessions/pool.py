"""Session pool configuration (and, with it, the bounded pool of live sessions)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .envtext import parse_value
from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class SessionPoolConfig:
    """Limits of the live-session pool, with the defaults of the Commons Pool design."""

    max_total: int = 100
    max_idle: int = 20
    min_idle: int = 5
    max_wait: float = 5.0
    test_on_borrow: bool = True
    test_on_return: bool = True

    def __post_init__(self) -> None:
        for name in ("max_total", "max_idle", "min_idle"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"pool {name} must be an int >= 0, got {value!r}")
        if self.max_total < 1:
            raise ConfigError(f"pool max_total must be >= 1, got {self.max_total}")
        if self.min_idle > self.max_idle:
            raise ConfigError(
                f"pool min_idle ({self.min_idle}) must not exceed max_idle ({self.max_idle})"
            )
        wait = self.max_wait
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not math.isfinite(wait) \
                or wait < 0:
            raise ConfigError(f"pool max_wait must be a finite number >= 0, got {wait!r}")
        for name in ("test_on_borrow", "test_on_return"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"pool {name} must be a bool")

    @staticmethod
    def parse_env(key: str, text: str) -> Any:
        """Convert one ``POOLED_SESSIONS_POOL_*`` variable to the field's type."""
        name = key.rsplit("POOL_", 1)[1].lower()
        kinds = {f.name: str(f.type) for f in fields(SessionPoolConfig)}
        if name not in kinds:
            raise ConfigError(f"unknown environment setting {key}")
        return parse_value(key, kinds[name], text)
