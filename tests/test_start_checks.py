"""Settings that cannot work fail at start, naming themselves, instead of every flush later.

Durations out of what the stores hold, store URLs that say something else than meant, Redis
URL options nobody takes, and a store that cannot be written: a wrong password, an
unreachable server, a read-only replica, a missing database, a directory that takes no
file. ``check_store=False`` starts lazily, and the asyncio service checks at first use.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pooled_sessions import AsyncSessionService, ConfigError, SessionService, Settings
from pooled_sessions.adapters.redis import RedisStore
from pooled_sessions.config import MAX_SECONDS
from pooled_sessions.errors import StoreError, StoreUnavailableError
from pooled_sessions.tools import cli
from tests.redis_servers import RedisServer, commands_called, free_port, unique_prefix

FAST = "socket_connect_timeout=0.5&socket_timeout=0.5&retries=0"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("expire_minutes", 1e308, "at most 5256000"),
        ("expire_minutes", MAX_SECONDS / 60 * 1.001, "10 years"),
        ("expire_minutes", 1e-7, "at least"),
        ("absolute_lifetime_minutes", 1e308, "at most"),
        ("tombstone_ttl_seconds", 0.0004, "1 ms"),
        ("tombstone_ttl_seconds", 1e12, "at most"),
        ("save_delay_seconds", 1e308, "at most"),
        ("save_delay_seconds", 1e-6, "0 or at least"),
        ("cleanup_interval_minutes", 1e300, "at most"),
        ("sync_interval_seconds", 1e308, "at most"),
        ("sync_interval_seconds", 1e-9, "at least"),
        ("backpressure_timeout_seconds", 1e308, "at most"),
        ("retry_max_seconds", 1e20, "at most"),
        ("shutdown_timeout_seconds", 1e308, "at most"),
        ("check_store", "yes", "must be a bool"),
    ],
)
def test_durations_the_stores_cannot_hold_are_refused(name: str, value: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=name) as raised:
        Settings(**{name: value})
    assert needle in str(raised.value)


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    longest = Settings(
        expire_minutes=MAX_SECONDS / 60,
        absolute_lifetime_minutes=MAX_SECONDS / 60,
        tombstone_ttl_seconds=MAX_SECONDS,
        save_delay_seconds=0.001,
    )
    assert longest.idle_seconds == MAX_SECONDS
    with SessionService(tmp_path / "s.json", settings=longest) as svc:
        sid = svc.create_session("alice")  # committed before it returns
        assert svc.force_save() == 0 and svc.validate_session(sid)
    with SessionService(tmp_path / "s.json", settings=longest) as svc:
        assert svc.validate_session(sid), "the store held the longest expiry"
    with SessionService(tmp_path / "t.json", tombstone_ttl_seconds=0.001) as svc:
        bob = svc.create_session("bob")
        assert svc.end_session(bob) and svc.force_save() == 0
    with SessionService(tmp_path / "t.json", tombstone_ttl_seconds=0.001) as svc:
        assert svc.get_session(bob) is None, "the store held the shortest tombstone"


def test_an_environment_value_out_of_bounds_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLED_SESSIONS_EXPIRE_MINUTES", "1e308")
    with pytest.raises(ConfigError, match="expire_minutes must be at most"):
        SessionService("memory://")
    with pytest.raises(ConfigError, match="max_wait must be at most"):
        Settings.load(environ={"POOLED_SESSIONS_POOL_MAX_WAIT": "1e12"})


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file://sessions.json", "file:///abs/path/sessions.json"),
        ("aiofile://sessions.json", "aiofile:///abs/path"),
        ("file://user:pw@/tmp/s.json", "names a host"),
        ("redis:/127.0.0.1:6379/0", "malformed: a redis URL starts with redis://"),
        ("redis:127.0.0.1", "malformed"),
        ("rediss:/h", "rediss://"),
        ("Memory:x", "memory://"),
        ("redis://h:port/0", "port is not a number"),
        ("unix://:Pw0000@/@/run/redis.sock", "'@' after the host is ambiguous"),
        ("unix:///run/a@b/redis.sock", "percent-encoded: %40"),
        ("redis://h/0@x", "'@' after the host"),
    ],
)
def test_store_urls_that_say_something_else_are_refused(
    url: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="store URL") as raised:
        SessionService(url)
    assert needle in str(raised.value)
    assert list(tmp_path.iterdir()) == [], "nothing was created"


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("sockettimeout=2", "did you mean socket_timeout?"),
        ("socket_timout=2", "did you mean socket_timeout?"),
        ("prefx=app", "did you mean prefix?"),
        ("decode_responses=true", "known options: chunk_size, client_name"),
        ("socket_timeout=inf", "socket_timeout='inf'"),
        ("socket_timeout=nan", "socket_timeout"),
        ("socket_timeout=-1", "socket_timeout"),
        ("socket_timeout=0", "socket_timeout"),
        ("socket_connect_timeout=1e9", "socket_connect_timeout"),
        ("retries=1000", "retries"),
        ("max_connections=0", "max_connections"),
        ("index_shards=2000", "index_shards"),
        ("client_name=my app", "client_name"),
        ("ssl_cert_reqs=none", "needs TLS: use rediss://"),
        ("db=two", "db"),
        ("socket_keepalive=maybe", "socket_keepalive"),
    ],
)
def test_redis_url_options_that_cannot_work_are_refused(query: str, needle: str) -> None:
    """At construction, with no server needed: redis-py would take an unknown option as a
    keyword of its connection and fail every command with TypeError, forever."""
    with pytest.raises(ConfigError, match="redis URL option") as raised:
        RedisStore(f"redis://127.0.0.1:{free_port()}/0?{query}")
    assert needle in str(raised.value)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://127.0.0.1:6390/zero", "database number"),
        ("redis://127.0.0.1:6390/1/2", "database number"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
        ("redis+cluster://127.0.0.1:7000?db=1", "database 0 only"),
        ("unix://", "names no socket"),
        ("rediss://127.0.0.1:6390/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs"),
    ],
)
def test_redis_urls_naming_what_cannot_be_used_are_refused(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        RedisStore(url)


def test_a_rediss_url_keeps_its_tls_options() -> None:
    store = RedisStore(
        f"rediss://127.0.0.1:{free_port()}/0?ssl_cert_reqs=none&ssl_check_hostname=false"
    )
    try:
        kwargs = store._client.connection_pool.connection_kwargs
        assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False
    finally:
        store.close()


# -- the store is checked when the service is built ------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("checked"), "--requirepass", "right-one")
    yield server.start()
    server.stop()


def secured_url(server: RedisServer, password: str = "right-one", db: int = 0) -> str:
    return f"redis://:{password}@127.0.0.1:{server.port}/{db}?prefix={unique_prefix()}&{FAST}"


@pytest.mark.redis
@pytest.mark.parametrize(
    ("password", "db", "needle"),
    [
        ("wrong-one", 0, "authentication failed"),
        ("", 0, "authentication failed"),
        ("right-one", 999, "no such database"),
    ],
)
def test_a_redis_that_cannot_be_used_fails_the_start(
    secured: RedisServer, password: str, db: int, needle: str
) -> None:
    url = secured_url(secured, password, db).replace("redis://:@", "redis://")
    with pytest.raises(StoreUnavailableError, match=needle) as raised:
        SessionService(url)
    assert f"redis://{':***@' if password else ''}127.0.0.1:{secured.port}" in str(raised.value)
    lazy = SessionService(url, check_store=False)  # started; the first write finds out
    try:
        with pytest.raises(StoreError):
            lazy.create_session("alice")
            lazy.force_save()
    finally:
        lazy.shutdown(timeout=0.5)


@pytest.mark.redis
def test_the_check_is_one_script_call_that_writes_under_the_prefix(secured: RedisServer) -> None:
    url = secured_url(secured)
    before = commands_called(secured)
    with SessionService(url, check_store=False, save_delay_seconds=3600):
        lazy = commands_called(secured)
    with SessionService(url, save_delay_seconds=3600) as svc:
        checked = commands_called(secured)
        prefix = svc._store.keys.prefix  # type: ignore[attr-defined]
        assert secured.cli("keys", f"{prefix}:c:*").strip(), "a key under the prefix"
    assert lazy.get("eval", 0) == before.get("eval", 0), "no check when check_store=False"
    assert checked.get("eval", 0) - lazy.get("eval", 0) == 1, "one script call"
    assert checked.get("set", 0) - lazy.get("set", 0) == 1, "that writes one key"


@pytest.mark.redis
def test_an_unreachable_redis_fails_the_start() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?{FAST}"
    with pytest.raises(StoreUnavailableError, match="unreachable.*Connection refused"):
        SessionService(url)


@pytest.mark.redis
def test_a_read_only_replica_fails_the_start(tmp_path: Path) -> None:
    replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(free_port()))
    try:
        replica.start()
        with pytest.raises(StoreUnavailableError, match="read-only replica"):
            SessionService(f"{replica.url}?{FAST}")
    finally:
        replica.stop()


@pytest.mark.redis
async def test_the_async_service_checks_at_first_use(secured: RedisServer) -> None:
    url = secured_url(secured, "wrong-one")
    svc = AsyncSessionService(url)  # __init__ cannot await: nothing is checked yet
    with pytest.raises(StoreUnavailableError, match="authentication failed"):
        async with svc:
            pass
    with pytest.raises(StoreUnavailableError, match="authentication failed"):
        await svc.create_session("alice")  # checked again, until it passes
    await svc.shutdown(timeout=0.5)
    lazy = AsyncSessionService(url, check_store=False)
    async with lazy:
        with pytest.raises(StoreUnavailableError):
            await lazy.get_session("x" * 43)
    async with AsyncSessionService(secured_url(secured)) as good:
        assert await good.validate_session(await good.create_session("alice"))


def test_a_sessions_file_that_cannot_be_written_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        SessionService(tmp_path / "missing" / "s.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(StoreUnavailableError, match="is a directory"):
        SessionService(tmp_path / "folder.json")
    (tmp_path / "locked.json.lock").mkdir()  # the lock file cannot be opened
    with pytest.raises(StoreUnavailableError, match=r"refusing lock file .*: it is a directory"):
        SessionService(tmp_path / "locked.json")


async def test_the_async_file_store_is_checked_at_first_use(tmp_path: Path) -> None:
    (tmp_path / "locked.json.lock").mkdir()
    svc = AsyncSessionService(f"aiofile://{tmp_path}/locked.json")
    with pytest.raises(StoreUnavailableError, match=r"refusing lock file .*: it is a directory"):
        await svc.create_session("alice")
    await svc.shutdown(timeout=0.5)


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """Make ``folder`` refuse new files, also to root (the immutable flag; chmod otherwise)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    folder.chmod(0o500)
    try:
        yield
    finally:
        folder.chmod(0o700)


def test_a_directory_without_write_permission_fails_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "s.json.lock").touch()  # so only the new temp file would fail, at each flush
    with unwritable(folder):
        with pytest.raises(OSError):
            (folder / "probe").touch()
        with pytest.raises(StoreUnavailableError, match="not writable"):
            SessionService(folder / "s.json")


@pytest.mark.redis
def test_check_store_comes_from_the_environment_too(
    secured: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().check_store is True
    monkeypatch.setenv("POOLED_SESSIONS_CHECK_STORE", "false")
    svc = SessionService(secured_url(secured, "wrong-one"))  # starts: the first write tells
    try:
        assert svc.settings.check_store is False
        with pytest.raises(StoreUnavailableError, match="password"):
            svc.create_session("alice")
            svc.force_save()
    finally:
        svc.shutdown(timeout=0.5)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://127.0.0.1:1/0?sockettimeout=2", "did you mean socket_timeout?"),
        ("file://sessions.json", "file:///abs/path/sessions.json"),
        ("redis:/127.0.0.1:1/0", "malformed"),
    ],
)
def test_the_command_refuses_a_bad_url_before_reading(
    url: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["inspect", url, "--quiet"]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and needle in err
