"""Fuzzed settings and store URLs: each is refused at construction with a `ConfigError`
naming what is wrong, or accepted and then works; never another exception, never a flush
that fails later, and never a password in what is shown.

Settings run a service on a memory or file store; Redis URLs are parsed and their client
built and given a connection object (where an unknown keyword would fail), without a server.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from pooled_sessions import ConfigError, SessionService, Settings
from pooled_sessions.adapters.redis import RedisStore
from pooled_sessions.adapters.redis.options import RedisOptions
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.config import MAX_SECONDS
from pooled_sessions.errors import StoreUnavailableError
from pooled_sessions.model import Reason

DURATIONS = [
    "expire_minutes",
    "absolute_lifetime_minutes",
    "save_delay_seconds",
    "cleanup_interval_minutes",
    "touch_step_seconds",
    "backpressure_timeout_seconds",
    "retry_initial_seconds",
    "retry_max_seconds",
    "shutdown_timeout_seconds",
    "tombstone_ttl_seconds",
    "sync_interval_seconds",
]
COUNTS = ["batch_save_threshold", "max_session_bytes", "max_pending_sessions"]
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e-9, max_value=1e12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 0.0004, 0.001, 1e308, -1e-300, 5_256_000, 315_360_000.0]),
)
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=5), NUMBERS)


def values_for(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(names), st.one_of(NUMBERS, ODD), max_size=4)


@settings(max_examples=80, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {},
        optional={
            "durations": values_for(DURATIONS),
            "counts": values_for(COUNTS),
            "flags": st.dictionaries(
                st.sampled_from(["bind_user_agent", "check_store", "client_binding"]),
                ODD | st.sampled_from(["off", "report", "strict"]),
                max_size=2,
            ),
        },
    ),
    on_file=st.booleans(),
)
def test_settings_are_refused_by_name_or_work(
    values: dict[str, dict[str, Any]], on_file: bool
) -> None:
    chosen = {k: v for part in values.values() for k, v in part.items()}
    try:
        checked = Settings(**chosen)
    except ConfigError as exc:
        assert any(name in str(exc) for name in chosen), f"{exc} names none of {list(chosen)}"
        return
    for name in DURATIONS:
        value = getattr(checked, name)
        unit = 60.0 if name.endswith("_minutes") else 1.0
        assert value is None or (math.isfinite(value) and value * unit <= MAX_SECONDS)
    with tempfile.TemporaryDirectory() as folder:
        backend = os.path.join(folder, "s.json") if on_file else f"memory://{uuid.uuid4().hex}"
        svc = SessionService(backend, settings=checked)
        try:
            sid = svc.create_session("alice", {"n": 1}, {"ip": "203.0.113.7"})
            result = svc.validate_session(sid, {"ip": "203.0.113.7"})
            assert result.reason in (Reason.OK, Reason.EXPIRED)
            assert svc.force_save() >= 0
            assert svc.stats()["last_error"] is None, "a flush failed"
        finally:
            report = svc.shutdown(timeout=5)
        assert report.complete and report.error is None


PASSWORD = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126) | st.sampled_from("é€ "),
    min_size=6,
    max_size=16,
).map(lambda text: f"Pw{text}")
OPTION_VALUES = st.sampled_from(["2", "0", "-1", "inf", "nan", "1e9", "abc", "", "none", "true"])
OPTIONS = st.dictionaries(
    st.sampled_from(
        [
            "socket_timeout",
            "retries",
            "prefix",
            "index_shards",
            "db",
            "client_name",
            "sockettimeout",
            "ssl_cert_reqs",
            "decode_responses",
            "socket_keepalive",
            "chunk_size",
        ]
    )
    | st.text(alphabet="abcdefghij_", min_size=1, max_size=8),
    OPTION_VALUES,
    max_size=3,
)


@st.composite
def redis_urls(draw: st.DrawFn) -> tuple[str, str]:
    """A Redis URL carrying a password somewhere (or nowhere), and that password."""
    scheme = draw(st.sampled_from(["redis", "rediss", "redis+cluster", "unix"]))
    password = draw(PASSWORD)
    written = draw(st.sampled_from([quote(password, safe=""), password]))
    where = draw(st.sampled_from(["userinfo", "user", "query", "none"]))
    user = {"userinfo": f":{written}@", "user": f"default:{written}@"}.get(where, "")
    host = (
        "/run/redis.sock"
        if scheme == "unix"
        else draw(st.sampled_from(["127.0.0.1:6379", "cache", "[::1]:7000", "redis.example:6380"]))
    )
    path = "" if scheme == "unix" else draw(st.sampled_from(["", "/", "/0", "/3", "/x"]))
    query = dict(draw(OPTIONS))
    if where == "query":
        query["password"] = written
    separator = draw(st.sampled_from(["://"] * 8 + [":/", ":"]))  # a "//" forgotten
    text = f"{scheme}{separator}{user}{host}{path}"
    if query:
        text += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return text, password if where != "none" else ""


def forms(password: str) -> list[str]:
    return [p for p in (password, quote(password, safe=""), quote(password)) if p]


@settings(max_examples=300, deadline=None)
@given(case=redis_urls())
def test_redis_urls_are_refused_or_usable_and_never_show_the_password(
    case: tuple[str, str],
) -> None:
    text, password = case
    try:
        url = StoreURL.parse(text)
        options = RedisOptions.parse(url, Settings())
        if not options.cluster:  # a cluster client reads its slot map at once: no server here
            store = RedisStore(url)
            try:
                store._client.connection_pool.make_connection()  # every keyword is taken
            finally:
                store.close()
    except ConfigError as exc:
        assert "URL" in str(exc) or "prefix" in str(exc), str(exc)
        for form in forms(password):
            assert form not in str(exc), f"password in {exc}"
        return
    for form in forms(password):
        for shown in (str(url), repr(url), repr(options), options.url):
            assert form not in shown, f"password in {shown}"
    again = StoreURL.parse(url.display)
    assert (again.scheme, again.host, again.port, again.path) == (
        url.scheme,
        url.host,
        url.port,
        url.path,
    ), "the display names the same place"
    if not password:
        assert url.display == text and StoreURL.parse(str(url)) == url


@settings(max_examples=100, deadline=None)
@given(
    form=st.sampled_from(
        [
            "file://{abs}",
            "file://{name}",
            "{name}",
            "./{name}",
            "aiofile://{name}",
            "redis:{name}",
            "file:/{abs}",
            "memory://{name}",
            "file://localhost{abs}",
        ]
    ),
    name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12),
)
def test_file_urls_are_refused_or_work(form: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        text = form.format(abs=os.path.join(folder, name), name=name)
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            try:
                svc = SessionService(text, batch_save_threshold=1)
            except ConfigError as exc:
                assert "store URL" in str(exc)
                return
            except StoreUnavailableError as exc:  # "." or "..": a directory, said so
                assert "directory" in str(exc)
                return
            try:
                sid = svc.create_session("alice")
                assert svc.force_save() >= 0 and svc.validate_session(sid)
            finally:
                assert svc.shutdown(timeout=5).complete
        finally:
            os.chdir(cwd)
