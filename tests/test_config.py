"""Settings: keyword arguments, a mapping and POOLED_SESSIONS_* variables, and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import ConfigError, PoolLimits, SessionPoolConfig, SessionService, Settings
from pooled_sessions.config import resolve_settings


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.save_delay_seconds == 5
    assert settings.batch_save_threshold == 10
    assert settings.cleanup_interval_minutes == 10
    assert settings.expire_minutes == 30
    assert settings.backend == "sessions.json"
    assert settings.pool is None, "no pool configured: live sessions are not capped"
    assert not settings.write_through
    assert settings.write_behind is False and settings.commits, "changes commit on return"


def test_precedence_environment_then_mapping_then_keywords() -> None:
    environ = {
        "POOLED_SESSIONS_EXPIRE_MINUTES": "1.5",
        "POOLED_SESSIONS_BATCH_SAVE_THRESHOLD": "7",
        "POOLED_SESSIONS_SAVE_DELAY_SECONDS": "2",
        "POOLED_SESSIONS_BIND_USER_AGENT": "no",
        "POOLED_SESSIONS_WRITE_BEHIND": "true",
    }
    only_env = Settings.load(environ=environ)
    assert only_env.expire_minutes == 1.5 and only_env.batch_save_threshold == 7
    assert only_env.bind_user_agent is False
    assert only_env.write_behind is True and not only_env.commits
    mapped = Settings.load({"batch_save_threshold": 3, "save_delay_seconds": 1}, environ=environ)
    assert (mapped.expire_minutes, mapped.batch_save_threshold) == (1.5, 3)
    both = Settings.load(
        {"batch_save_threshold": 3, "save_delay_seconds": 1},
        environ=environ,
        save_delay_seconds=0.25,
    )
    assert both.batch_save_threshold == 3 and both.save_delay_seconds == 0.25
    assert both.expire_minutes == 1.5


def test_service_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.json"
    monkeypatch.setenv("POOLED_SESSIONS_BACKEND", str(path))
    monkeypatch.setenv("POOLED_SESSIONS_EXPIRE_MINUTES", "0.25")
    monkeypatch.setenv("POOLED_SESSIONS_ABSOLUTE_LIFETIME_MINUTES", "none")
    with SessionService(save_delay_seconds=0.5) as svc:
        assert svc.settings.expire_minutes == 0.25
        assert svc.settings.absolute_lifetime_minutes is None
        assert svc.settings.backend == str(path)
        svc.create_session("alice")
    assert path.exists()
    with SessionService(tmp_path / "explicit.json") as svc:
        assert svc.settings.backend == str(tmp_path / "explicit.json"), "the argument wins"


def test_settings_object_plus_overrides(tmp_path: Path) -> None:
    base = Settings(backend=str(tmp_path / "s.json"), expire_minutes=5)
    resolved = resolve_settings(None, base, {"batch_save_threshold": 2})
    assert (resolved.expire_minutes, resolved.batch_save_threshold) == (5, 2)
    assert resolve_settings(tmp_path / "t.json", base, {}).backend == str(tmp_path / "t.json")
    with pytest.raises(ConfigError, match="settings must be a Settings"):
        resolve_settings(None, {"expire_minutes": 1}, {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown setting.*bogus"):
        resolve_settings(None, base, {"bogus": 1})


def test_pool_from_environment_and_mapping() -> None:
    settings = Settings.load(
        environ={"POOLED_SESSIONS_POOL_MAX_TOTAL": "50", "POOLED_SESSIONS_POOL_MAX_WAIT": "0.5"}
    )
    assert settings.pool == PoolLimits(max_total=50, max_wait=0.5)
    mapped = Settings.load({"pool": {"max_total": 7}})
    assert mapped.pool == PoolLimits(max_total=7, max_wait=5.0)


def test_a_session_pool_config_given_to_a_service_becomes_its_limits(tmp_path: Path) -> None:
    config = SessionPoolConfig(max_total=500, max_wait=2.0)
    for settings in (
        Settings(pool=config),
        Settings.load(pool=config),
        Settings().replace(pool=config),
        Settings(pool=SessionPoolConfig(max_total=500, max_wait=2.0, max_idle=20, min_idle=5)),
    ):
        assert settings.pool == PoolLimits(max_total=500, max_wait=2.0)
        assert type(settings.pool) is PoolLimits
    with SessionService(tmp_path / "s.json", pool=config) as svc:
        assert svc.settings.pool == PoolLimits(max_total=500, max_wait=2.0)


STANDALONE_VALUES: list[tuple[str, Any]] = [
    ("max_idle", 30),
    ("min_idle", 0),
    ("test_on_borrow", False),
    ("test_on_return", False),
]


@pytest.mark.parametrize(("name", "value"), STANDALONE_VALUES)
def test_a_pool_field_the_services_ignore_is_refused(name: str, value: Any, tmp_path: Path) -> None:
    config = SessionPoolConfig(**{name: value})
    needle = f"pool {name}={value!r} only applies to a standalone SessionPool"
    with pytest.raises(ConfigError, match=needle):
        Settings(pool=config)
    with pytest.raises(ConfigError, match=needle):
        SessionService(tmp_path / "s.json", pool=config)
    with pytest.raises(ConfigError, match=f"pool setting {name} only applies to a standalone"):
        Settings.load({"pool": {"max_total": 5, name: getattr(SessionPoolConfig(), name)}})
    variable = f"POOLED_SESSIONS_POOL_{name.upper()}"
    with pytest.raises(ConfigError, match=f"{variable} only applies to a standalone SessionPool"):
        Settings.load(environ={variable: str(value)})


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"max_total": 0}, "max_total must be an int >= 1"),
        ({"max_total": True}, "max_total"),
        ({"max_total": 2.5}, "max_total"),
        ({"max_wait": -1}, "max_wait must be a finite number >= 0"),
        ({"max_wait": float("nan")}, "max_wait"),
        ({"max_wait": "5"}, "max_wait"),
    ],
)
def test_bad_pool_limits_are_refused(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        PoolLimits(**config)
    with pytest.raises(ConfigError, match=needle):
        SessionPoolConfig(**config)
    with pytest.raises(ConfigError, match=needle):
        Settings.load({"pool": config})


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"max_idle": -1}, "max_idle must be an int >= 0"),
        ({"min_idle": 3, "max_idle": 2}, r"min_idle \(3\) must not exceed max_idle \(2\)"),
        ({"test_on_borrow": "yes"}, "test_on_borrow must be a bool"),
        ({"test_on_return": 1}, "test_on_return must be a bool"),
    ],
)
def test_bad_session_pool_config_is_refused(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        SessionPoolConfig(**config)


BAD_VALUES: list[tuple[str, Any]] = [
    ("expire_minutes", 0),
    ("expire_minutes", -1),
    ("expire_minutes", "30"),
    ("expire_minutes", True),
    ("expire_minutes", float("nan")),
    ("expire_minutes", float("inf")),
    ("absolute_lifetime_minutes", 0),
    ("save_delay_seconds", -0.1),
    ("save_delay_seconds", None),
    ("batch_save_threshold", 0),
    ("batch_save_threshold", 2.5),
    ("batch_save_threshold", "10"),
    ("cleanup_interval_minutes", 0),
    ("touch_step_seconds", -1),
    ("client_binding", "loose"),
    ("client_binding", None),
    ("bind_user_agent", "yes"),
    ("write_behind", 1),
    ("write_behind", "false"),
    ("max_session_bytes", 10),
    ("max_pending_sessions", 0),
    ("backpressure_timeout_seconds", -1),
    ("retry_initial_seconds", 0),
    ("retry_max_seconds", float("inf")),
    ("shutdown_timeout_seconds", -5),
    ("tombstone_ttl_seconds", 0),
    ("sync_interval_seconds", 0),
    ("key_prefix", ""),
    ("backend", ""),
    ("backend", 42),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_every_bad_value_is_a_config_error_naming_it(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings(**{name: value})
    with pytest.raises(ConfigError, match=name):
        Settings.load({name: value})


def test_cross_field_check() -> None:
    with pytest.raises(ConfigError, match="touch_step_seconds"):
        Settings(expire_minutes=1, touch_step_seconds=60)
    with pytest.raises(ConfigError, match="pool"):
        Settings(pool={"max_total": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variable", "text", "needle"),
    [
        ("POOLED_SESSIONS_EXPIRE_MINUTES", "soon", "POOLED_SESSIONS_EXPIRE_MINUTES"),
        ("POOLED_SESSIONS_EXPIRE_MINUTES", "nan", "expire_minutes"),
        ("POOLED_SESSIONS_BATCH_SAVE_THRESHOLD", "1.5", "POOLED_SESSIONS_BATCH_SAVE_THRESHOLD"),
        ("POOLED_SESSIONS_BIND_USER_AGENT", "maybe", "POOLED_SESSIONS_BIND_USER_AGENT"),
        ("POOLED_SESSIONS_WRITE_BEHIND", "sometimes", "POOLED_SESSIONS_WRITE_BEHIND"),
        ("POOLED_SESSIONS_CLIENT_BINDING", "lax", "client_binding"),
        ("POOLED_SESSIONS_SAVE_DELAY_SECONDS", "-1", "save_delay_seconds"),
        ("POOLED_SESSIONS_POOL_MAX_TOTAL", "0", "max_total"),
        ("POOLED_SESSIONS_POOL_MAX_TOTAL", "many", "POOLED_SESSIONS_POOL_MAX_TOTAL"),
        ("POOLED_SESSIONS_EXPIRY", "5", "POOLED_SESSIONS_EXPIRY"),
        ("POOLED_SESSIONS_POOL", "5", "POOLED_SESSIONS_POOL"),
        ("POOLED_SESSIONS_POOL_SIZE", "5", "POOLED_SESSIONS_POOL_SIZE"),
    ],
)
def test_bad_environment_is_a_config_error_naming_it(
    variable: str, text: str, needle: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.load(environ={variable: text})
    monkeypatch.setenv(variable, text)
    with pytest.raises(ConfigError, match=needle):
        SessionService(tmp_path / "s.json")


def test_unknown_keywords_and_mapping_keys() -> None:
    with pytest.raises(ConfigError, match="expire_minute"):
        Settings.load(expire_minute=5)
    with pytest.raises(ConfigError, match="batch_size"):
        Settings.load({"batch_size": 5})
    with pytest.raises(ConfigError, match="pool.*max_totl|max_totl"):
        Settings.load({"pool": {"max_totl": 5}})


def test_service_refuses_bad_options_and_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expire_minutes"):
        SessionService(tmp_path / "s.json", expire_minutes=-1)
    with pytest.raises(ConfigError, match="flush_every"):
        SessionService(tmp_path / "s.json", flush_every=3)
    with pytest.raises(ConfigError, match="gopher"):
        SessionService("gopher://example.org/x")
    with pytest.raises(ConfigError, match="empty"):
        SessionService("   ")
    assert not (tmp_path / "s.json").exists()
