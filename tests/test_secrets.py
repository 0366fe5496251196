"""A Redis password never shows: not in stats, the command's output, exception texts (and
the exceptions they chain), last_error, ShutdownReport, log records or any repr.

Against a real redis-server started with ``--requirepass``; the password holds characters
a URL must percent-encode, so both its forms are looked for.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from pooled_sessions import AsyncSessionService, SessionService, Settings
from pooled_sessions.adapters.redis import RedisStore
from pooled_sessions.adapters.url import StoreURL, redact
from pooled_sessions.errors import ConfigError, SessionError, StoreError
from pooled_sessions.tools import cli
from tests import storekit
from tests.redis_servers import RedisServer, free_port, unique_prefix

pytestmark = pytest.mark.redis
PASSWORD = "Open-Sesame@9f/2c:x"
FORMS = (PASSWORD, quote(PASSWORD, safe=""))
FAST = "socket_connect_timeout=0.5&socket_timeout=0.5&retries=0"


def assert_hidden(*texts: object) -> None:
    """No form of the password in any of ``texts``."""
    for text in texts:
        for form in FORMS:
            assert form not in str(text), f"the password shows in: {text}"


def everything_about(exc: BaseException) -> str:
    """An exception as a log shows it: its traceback and every exception it chains."""
    return "".join(traceback.format_exception(exc))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of these tests alone that asks for ``PASSWORD``."""
    server = RedisServer(tmp_path_factory.mktemp("secured"), "--requirepass", PASSWORD)
    yield server.start()
    server.stop()


def url_of(server: RedisServer, form: str = "userinfo", db: int = 0, port: int = 0) -> str:
    """A URL of ``server`` carrying the password in one of its forms."""
    where = f"127.0.0.1:{port or server.port}/{db}"
    secret = quote(PASSWORD, safe="")
    query = f"prefix={unique_prefix()}&{FAST}"
    if form == "userinfo":
        return f"redis://:{secret}@{where}?{query}"
    if form == "user":
        return f"redis://default:{secret}@{where}?{query}"
    return f"redis://{where}?password={secret}&{query}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw-1234@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw-1234@h/0", "redis://user:***@h/0"),
        (
            "rediss://:pw-1234@h:6380/0?ssl_cert_reqs=none",
            "rediss://:***@h:6380/0?ssl_cert_reqs=none",
        ),
        ("redis+cluster://:pw-1234@h:7000?prefix=a", "redis+cluster://:***@h:7000?prefix=a"),
        ("redis://h/0?password=pw-1234&prefix=a", "redis://h/0?password=***&prefix=a"),
        ("redis://h/0?ssl_password=pw-1234", "redis://h/0?ssl_password=***"),
        ("redis://h/0?pasword=pw-1234", "redis://h/0?pasword=***"),  # a misspelling too
        ("unix://:pw-1234@/run/r.sock?db=2", "unix://:***@/run/r.sock?db=2"),
        ("unix:///run/r.sock?password=pw-1234", "unix:///run/r.sock?password=***"),
        ("redis://pw-1234@h/0", "redis://***@h/0"),  # user information without a colon
        ("redis://:pw/1234@h/0", "redis://***@h/0"),  # an unescaped "/" in the password
        ("redis://:pw?1234@h/0", "redis://***@h/0"),
        ("redis://h/0?client_name=me@home", "redis://h/0?client_name=me@home"),
        ("file:///srv/a@b/sessions.json", "file:///srv/a@b/sessions.json"),
        ("sessions.json", "sessions.json"),
    ],
)
def test_every_credential_form_is_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown and "1234" not in shown
    try:
        parsed = StoreURL.parse(url)
    except ConfigError as exc:  # a password with an unescaped "/" or "?" breaks the port
        assert "1234" not in str(exc) and "percent-encoded" in str(exc)
    else:
        assert str(parsed) == parsed.display == shown and repr(parsed) == f"StoreURL({shown!r})"


@pytest.mark.parametrize("form", ["userinfo", "user", "query"])
def test_a_service_works_and_shows_no_password(
    secured: RedisServer, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(secured, form)
    with SessionService(url, batch_save_threshold=1) as svc:
        sid = svc.create_session("alice", {"cart": [3]})
        assert svc.force_save() >= 0 and svc.validate_session(sid)
        stats = svc.stats()
        assert stats["store"].startswith("redis://") and stats["sessions_written"] >= 1
        store = svc._store
        assert isinstance(store, RedisStore)
        assert_hidden(stats, repr(svc), repr(store), vars(store), repr(svc.settings))
        assert_hidden(repr(Settings(backend=url)), repr(store.options))
    assert_hidden(*(record.getMessage() for record in caplog.records))


def test_inspect_and_migrate_output_shows_no_password(
    secured: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = storekit.file_url(tmp_path, "src")
    storekit.seed(source, storekit.sample(5))
    url = url_of(secured, "userinfo")
    assert cli.main(["migrate", source, url, "--quiet"]) == 0
    for extra in ([], ["--json"]):
        assert cli.main(["inspect", url, "--quiet", *extra]) == 0
        out, err = capsys.readouterr()
        assert "5 live" in out or json.loads(out)["live"] == 5
        assert_hidden(out, err)
    assert cli.main(["cleanup", url, "--quiet"]) == 0
    assert_hidden(*capsys.readouterr())


def test_errors_of_an_unreachable_server_show_no_password(
    secured: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = url_of(secured, "userinfo", port=free_port())
    with pytest.raises(StoreError, match="unreachable") as raised:
        SessionService(url)
    assert_hidden(everything_about(raised.value))
    assert cli.main(["inspect", url, "--quiet"]) == 3
    out, err = capsys.readouterr()
    assert "unavailable" in err and "***" in err
    assert_hidden(out, err)


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_errors_of_a_wrong_database_or_option_show_no_password(
    secured: RedisServer, form: str
) -> None:
    with pytest.raises(StoreError, match="no such database") as raised:
        SessionService(url_of(secured, form, db=999))
    assert_hidden(everything_about(raised.value))
    with pytest.raises(ConfigError, match="sockettimeout") as refused:
        SessionService(url_of(secured, form) + "&sockettimeout=2")
    assert_hidden(everything_about(refused.value))
    with pytest.raises(ConfigError, match="socket_timeout") as bad:
        SessionService(url_of(secured, form) + "&socket_timeout=inf")
    assert_hidden(everything_about(bad.value))


def test_last_error_report_and_logs_of_a_failed_flush_show_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "restart", "--requirepass", PASSWORD).start()
    try:
        svc = SessionService(url_of(server, "userinfo"), write_behind=True, save_delay_seconds=3600)
        sid = svc.create_session("alice")
        server.stop()
        with caplog.at_level(logging.WARNING, logger="session_service"):
            with pytest.raises(StoreError) as raised:
                svc.force_save()
            stats = svc.stats()
            report = svc.shutdown(timeout=1)
        assert stats["last_error"] is not None and "***" in stats["last_error"]
        assert report.unsaved == (sid[:8] + "…",) and report.error is not None
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("flush of 1 session(s) failed" in r.getMessage() for r in warnings)
        assert_hidden(everything_about(raised.value), stats, report, repr(svc))
        assert_hidden(*(r.getMessage() for r in warnings), *(r.exc_text for r in warnings))
    finally:
        server.stop()


def test_a_wrong_password_fails_the_start_and_shows_neither(secured: RedisServer) -> None:
    wrong = "Wrong-Horse-77@x"
    url = url_of(secured).replace(quote(PASSWORD, safe=""), quote(wrong, safe=""))
    with pytest.raises(StoreError, match="authentication failed") as raised:
        SessionService(url)
    text = everything_about(raised.value)
    assert f"127.0.0.1:{secured.port}" in text
    assert wrong not in text and quote(wrong, safe="") not in text
    assert_hidden(text)


def test_errors_of_a_ready_client_show_its_password(secured: RedisServer) -> None:
    import redis

    client = redis.Redis(port=free_port(), password=PASSWORD, socket_connect_timeout=0.5)
    store = RedisStore(settings=Settings(key_prefix=unique_prefix()), client=client)
    try:
        with pytest.raises(StoreError) as raised:
            store.load("x" * 43)
        assert_hidden(everything_about(raised.value), repr(store))
    finally:
        store.close()
        client.close()


async def test_the_async_service_shows_no_password(secured: RedisServer) -> None:
    url = url_of(secured, "user")
    async with AsyncSessionService(url) as svc:
        sid = await svc.create_session("alice")
        assert await svc.validate_session(sid)
        stats = await svc.stats()
        assert_hidden(stats, repr(svc), repr(svc._store))
    broken = AsyncSessionService(url_of(secured, "user", port=free_port()))
    with pytest.raises(SessionError, match="unreachable") as raised:
        await broken.create_session("bob")
    assert_hidden(everything_about(raised.value))
    report = await broken.shutdown(timeout=1)
    assert report.complete and report.written == 0


def test_a_client_error_that_echoes_the_password_is_scrubbed(
    secured: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py may put a command's arguments in its messages: no real server makes it echo
    the password, so a pipeline that does is staged on the store's own client."""
    import redis

    store = RedisStore(url_of(secured))
    try:

        def echoing(*args: object, **kwargs: object) -> object:
            try:
                raise OSError(f"reset while sending AUTH {PASSWORD}")
            except OSError as exc:
                raise redis.ConnectionError(f"AUTH default {quote(PASSWORD, safe='')}") from exc

        monkeypatch.setattr(store._client, "pipeline", echoing)
        with pytest.raises(StoreError, match="unavailable") as raised:
            store.load("x" * 43)
        assert "AUTH default ***" in str(raised.value)
        assert_hidden(everything_about(raised.value))
    finally:
        monkeypatch.undo()
        store.close()
