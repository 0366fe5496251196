"""Settings: one validated object built from keyword arguments, a mapping or the environment."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from pooled_sessions.errors import ConfigError
from pooled_sessions.redaction import redact

ENV_PREFIX = "POOLED_SESSIONS_"
ClientBinding = Literal["off", "report", "strict"]
_BINDINGS: tuple[str, ...] = get_args(ClientBinding)


MAX_SECONDS = 10 * 365 * 86_400.0
"""The longest duration any setting takes: 10 years. Far inside what the stores hold (a
Redis expiry is a signed 64-bit count of milliseconds) and what a thread can wait."""
MIN_SECONDS = 0.001
"""The shortest duration a setting that must be positive takes: 1 ms, the stores' unit."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_value(key: str, kind: str, text: str) -> bool | int | float | str | None:
    """Convert ``text`` of variable ``key`` to ``kind``: bool, int, float, str, or none|KIND."""
    lowered = text.strip().lower()
    if kind.startswith("none|"):
        if lowered in ("", "none"):
            return None
        kind = kind[5:]
    if kind == "bool":
        if lowered not in _TRUE + _FALSE:
            raise ConfigError(f"{key}={text!r} is not a boolean")
        return lowered in _TRUE
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a number") from None
    return text


def _check_count(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"pool {name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimits:
    """What a service's pool enforces: ``max_total`` live sessions, a ``max_wait`` for a slot."""

    max_total: int = 100
    max_wait: float = 5.0

    def __post_init__(self) -> None:
        _check_count("max_total", self.max_total, 1)
        wait = self.max_wait
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or not math.isfinite(wait)
            or wait < 0
        ):
            raise ConfigError(f"pool max_wait must be a finite number >= 0, got {wait!r}")
        if wait > MAX_SECONDS:
            raise ConfigError(
                f"pool max_wait must be at most {MAX_SECONDS:.0f} (10 years), got {wait!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPoolConfig(PoolLimits):
    """A standalone `SessionPool`'s configuration: the limits, plus the idle list and the
    validation of the Commons Pool design, with its defaults."""

    max_idle: int = 20
    min_idle: int = 5
    test_on_borrow: bool = True
    test_on_return: bool = True

    def __post_init__(self) -> None:
        PoolLimits.__post_init__(self)  # slots=True rebuilds the class: no bare super()
        _check_count("max_idle", self.max_idle, 0)
        _check_count("min_idle", self.min_idle, 0)
        if self.min_idle > self.max_idle:
            raise ConfigError(
                f"pool min_idle ({self.min_idle}) must not exceed max_idle ({self.max_idle})"
            )
        for name in ("test_on_borrow", "test_on_return"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"pool {name} must be a bool")


_LIMIT_KINDS = {"max_total": "int", "max_wait": "float"}
STANDALONE_ONLY = tuple(f.name for f in fields(SessionPoolConfig) if f.name not in _LIMIT_KINDS)
"""Fields of `SessionPoolConfig` that only a standalone `SessionPool` uses."""
_STANDALONE_NOTE = (
    "only applies to a standalone SessionPool (a service's pool enforces max_total and "
    "max_wait only)"
)


def service_limits(pool: object) -> PoolLimits:
    """The limits a service enforces, from a `PoolLimits` or a `SessionPoolConfig`.

    A `SessionPoolConfig` that sets a field the services would ignore is refused.
    """
    if type(pool) is PoolLimits:
        return pool
    if not isinstance(pool, PoolLimits):
        raise ConfigError(
            f"pool must be a PoolLimits or a SessionPoolConfig, not {type(pool).__name__}"
        )
    if isinstance(pool, SessionPoolConfig):
        defaults = SessionPoolConfig()
        for name in STANDALONE_ONLY:
            value = getattr(pool, name)
            if value != getattr(defaults, name):
                raise ConfigError(f"pool {name}={value!r} {_STANDALONE_NOTE}")
    return PoolLimits(max_total=pool.max_total, max_wait=pool.max_wait)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every tunable of a service, validated once.

    Precedence when loading: defaults < environment (``POOLED_SESSIONS_*``) < mapping <
    keyword arguments.
    """

    backend: str = "sessions.json"
    expire_minutes: float = 30.0
    absolute_lifetime_minutes: float | None = None
    save_delay_seconds: float = 5.0
    batch_save_threshold: int = 10
    write_behind: bool = False
    cleanup_interval_minutes: float = 10.0
    touch_step_seconds: float | None = None
    client_binding: ClientBinding = "report"
    bind_user_agent: bool = True
    max_session_bytes: int = 64 * 1024
    max_pending_sessions: int = 50_000
    backpressure_timeout_seconds: float = 5.0
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    shutdown_timeout_seconds: float = 10.0
    tombstone_ttl_seconds: float = 24 * 3600.0
    sync_interval_seconds: float = 1.0
    key_prefix: str = "pooled_sessions"
    check_store: bool = True
    pool: PoolLimits | None = field(default=None)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "pool":
                _check(f.name, getattr(self, f.name))
        if self.pool is not None:  # a SessionPoolConfig is narrowed to what is enforced
            object.__setattr__(self, "pool", service_limits(self.pool))
        if self.touch_step_seconds is not None and self.touch_step_seconds >= self.idle_seconds:
            raise ConfigError(
                f"touch_step_seconds ({self.touch_step_seconds}) must be shorter than the "
                f"idle expiry ({self.idle_seconds} s)"
            )

    def __repr__(self) -> str:
        shown = (
            f"{f.name}={redact(self.backend)!r}"
            if f.name == "backend"
            else f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
        )
        return f"Settings({', '.join(shown)})"

    @property
    def idle_seconds(self) -> float:
        """Idle expiry in seconds."""
        return self.expire_minutes * 60.0

    @property
    def touch_step(self) -> float:
        """How far a touch must move the expiry before it is written to the store."""
        if self.touch_step_seconds is not None:
            return self.touch_step_seconds
        return min(60.0, self.idle_seconds / 10.0)

    @property
    def write_through(self) -> bool:
        """True when every change and every touch is written before its call returns."""
        return self.save_delay_seconds == 0

    @property
    def commits(self) -> bool:
        """True when a call that changes a session returns only once the store holds it."""
        return not self.write_behind

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        mapping: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Settings:
        """Build settings from the environment, then a mapping, then keyword arguments."""
        values: dict[str, Any] = from_environ(os.environ if environ is None else environ)
        for source in (mapping or {}, kwargs):
            unknown = set(source) - _FIELD_NAMES
            if unknown:
                raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
            values.update(source)
        if isinstance(values.get("pool"), Mapping):
            values["pool"] = _pool_from(values["pool"])
        return cls(**values)


def _pool_from(mapping: Mapping[str, Any]) -> PoolLimits:
    """A service's pool limits from a mapping, naming any key it does not take."""
    for name in STANDALONE_ONLY:
        if name in mapping:
            raise ConfigError(f"pool setting {name} {_STANDALONE_NOTE}")
    unknown = set(mapping) - _LIMIT_KINDS.keys()
    if unknown:
        raise ConfigError(f"unknown pool setting(s): {', '.join(sorted(map(str, unknown)))}")
    return PoolLimits(**mapping)


def _pool_env(key: str, name: str, text: str) -> Any:
    """Convert variable ``key``, which sets pool field ``name``, to the field's type."""
    if name in STANDALONE_ONLY:
        raise ConfigError(f"{key} {_STANDALONE_NOTE}")
    if name not in _LIMIT_KINDS:
        raise ConfigError(f"unknown environment setting {key}")
    return parse_value(key, _LIMIT_KINDS[name], text)


_FIELD_NAMES = frozenset(f.name for f in fields(Settings))
_FLOATS = {  # name: (lowest, lowest allowed, seconds per unit)
    "expire_minutes": (0.0, False, 60.0),
    "absolute_lifetime_minutes": (0.0, False, 60.0),
    "save_delay_seconds": (0.0, True, 1.0),
    "cleanup_interval_minutes": (0.0, False, 60.0),
    "touch_step_seconds": (0.0, True, 1.0),
    "backpressure_timeout_seconds": (0.0, True, 1.0),
    "retry_initial_seconds": (0.0, False, 1.0),
    "retry_max_seconds": (0.0, False, 1.0),
    "shutdown_timeout_seconds": (0.0, True, 1.0),
    "tombstone_ttl_seconds": (0.0, False, 1.0),
    "sync_interval_seconds": (0.0, False, 1.0),
}
_INTS = {"batch_save_threshold": 1, "max_session_bytes": 64, "max_pending_sessions": 1}
_BOOLS = {"bind_user_agent", "check_store", "write_behind"}
_OPTIONAL = {"absolute_lifetime_minutes", "touch_step_seconds"}


def _check(name: str, value: Any) -> None:
    if value is None and name in _OPTIONAL:
        return
    if name in _FLOATS:
        _check_duration(name, value)
    elif name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an int, not {type(value).__name__}")
        if value < _INTS[name]:
            raise ConfigError(f"{name} must be >= {_INTS[name]}, got {value!r}")
    elif name == "client_binding":
        if value not in _BINDINGS:
            raise ConfigError(f"client_binding must be one of {_BINDINGS}, got {value!r}")
    elif name in _BOOLS:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a bool, not {type(value).__name__}")
    elif not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty str, got {value!r}")


def _check_duration(name: str, value: Any) -> None:
    """A duration: a finite number, from 1 ms (or 0 where 0 means "none") to 10 years."""
    low, inclusive, unit = _FLOATS[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        bound = ">=" if inclusive else ">"
        raise ConfigError(f"{name} must be a finite number {bound} {low}, got {value!r}")
    if value * unit > MAX_SECONDS:
        raise ConfigError(
            f"{name} must be at most {MAX_SECONDS / unit:.0f} (10 years), got {value!r}"
        )
    if value and value * unit < MIN_SECONDS:
        raise ConfigError(
            f"{name} must be 0 or at least {MIN_SECONDS / unit:.6g} (1 ms), got {value!r}"
            if inclusive
            else f"{name} must be at least {MIN_SECONDS / unit:.6g} (1 ms), got {value!r}"
        )


def _kind(name: str) -> str:
    base = "float" if name in _FLOATS else "int" if name in _INTS else "str"
    if name in _BOOLS:
        base = "bool"
    return f"none|{base}" if name in _OPTIONAL else base


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Setting values found in ``POOLED_SESSIONS_*`` variables, converted and checked."""
    values: dict[str, Any] = {}
    pool: dict[str, Any] = {}
    pool_prefix = ENV_PREFIX + "POOL_"
    for key, text in environ.items():
        if key.startswith(pool_prefix):
            name = key[len(pool_prefix) :].lower()
            pool[name] = _pool_env(key, name, text)
        elif key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _FIELD_NAMES or name == "pool":
                raise ConfigError(f"unknown environment setting {key}")
            values[name] = parse_value(key, _kind(name), text)
    if pool:
        values["pool"] = pool
    return values


def resolve_settings(
    backend: object, settings: Settings | None, options: Mapping[str, Any]
) -> Settings:
    """Settings for a service: ``settings`` (or the environment) plus options and backend."""
    if backend is not None:
        options = {
            **options,
            "backend": os.fspath(backend) if isinstance(backend, os.PathLike) else backend,
        }
    if settings is None:
        return Settings.load(**options)
    if not isinstance(settings, Settings):
        raise ConfigError(f"settings must be a Settings, not {type(settings).__name__}")
    unknown = set(options) - _FIELD_NAMES
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return settings.replace(**options) if options else settings
