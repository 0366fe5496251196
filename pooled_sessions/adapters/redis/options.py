"""Options of a Redis store URL, converted once through a typed table.

``redis://host:6379/0?socket_timeout=2&max_connections=50&prefix=app``: the options of
`OPTIONS` are checked and removed; the redis-py options of `PASSED` (the database, the
credentials, TLS) are checked and go to redis-py's ``from_url``. Any other name is refused
at once, with the known ones and the closest match: redis-py would take it as a keyword of
its connection class and fail every command, forever.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from pooled_sessions.adapters.redis.keys import KeySchema
from pooled_sessions.adapters.url import StoreURL, redact
from pooled_sessions.config import Settings
from pooled_sessions.errors import ConfigError

CLUSTER_SCHEME = "redis+cluster"
TLS_SCHEME = "rediss"
_BOOLEANS = ("true", "false", "yes", "no", "on", "off", "1", "0")
_DB_PATH = re.compile(r"/?(\d*)/?")


def _number(kind: Callable[[str], float], low: float, high: float, *, above: bool = False) -> Any:
    """A parser of numbers from ``low`` (excluded if ``above``) to ``high``."""
    shown = f"{'> ' if above else 'from '}{low:g} {'and <=' if above else 'to'} {high:g}"

    def parse(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or value > high or value < low or (above and value == low):
            raise ValueError(f"expected a number {shown}, got {text!r}")
        return value

    return parse


def _client_name(text: str) -> str:
    if not text or any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("Redis refuses a connection name with spaces or special characters")
    return text


def _boolean(text: str) -> str:
    if text.strip().lower() not in _BOOLEANS:
        raise ValueError(f"expected one of {', '.join(_BOOLEANS)}, got {text!r}")
    return text


def _choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {text!r}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class Option:
    """One URL option: its parser, default, and whether the client or the store takes it."""

    parse: Callable[[str], Any]
    default: Any
    for_client: bool
    doc: str


OPTIONS: Mapping[str, Option] = {
    "socket_timeout": Option(
        _number(float, 0, 3600, above=True), 5.0, True, "seconds to wait for a reply"
    ),
    "socket_connect_timeout": Option(
        _number(float, 0, 3600, above=True), 2.0, True, "seconds to connect"
    ),
    "max_connections": Option(_number(int, 1, 100_000), None, True, "connection pool size"),
    "health_check_interval": Option(
        _number(int, 1, 86_400), 30, True, "seconds idle before a connection is checked with PING"
    ),
    "retries": Option(_number(int, 0, 100), 2, True, "retries after a connection error"),
    "client_name": Option(_client_name, "pooled-sessions", True, "CLIENT SETNAME"),
    "prefix": Option(str, None, False, "key prefix (default: the key_prefix setting)"),
    "index_shards": Option(
        _number(int, 1, 1024), None, False, "expiry index shards (default 1; 16 on a cluster)"
    ),
    "chunk_size": Option(_number(int, 1, 100_000), 500, False, "operations per pipeline"),
}
"""This library's options: checked, then removed from the URL redis-py sees."""

_TLS: Mapping[str, Callable[[str], Any]] = {
    "ssl_cert_reqs": _choice("none", "optional", "required"),
    "ssl_check_hostname": _boolean,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_ca_data": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_ciphers": str,
    "ssl_min_version": _number(int, 0, 1000),
}
PASSED: Mapping[str, Callable[[str], Any]] = {
    "db": _number(int, 0, 1_000_000),
    "username": str,
    "password": str,
    "socket_keepalive": _boolean,
    **_TLS,
}
"""redis-py's options a URL may carry: checked here, handed to ``from_url`` as they are."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisOptions:
    """Everything a Redis store needs from its URL and settings.

    ``url`` is the URL as shown (redacted); ``client_url`` (with credentials) is read only
    to build the client, and ``secrets`` to take credentials out of the client's errors.
    """

    url: str
    client_url: str = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    cluster: bool
    keys: KeySchema
    chunk_size: int
    retries: int
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tombstone_ttl_ms: int = 86_400_000

    @classmethod
    def parse(cls, url: StoreURL, settings: Settings) -> RedisOptions:
        """Check the URL's options and database, and build the URL handed to redis-py."""
        cluster = url.scheme == CLUSTER_SCHEME
        values, rest = _options(url)
        _check_database(url, rest.get("db"), cluster)

        def get(name: str) -> Any:
            return values.get(name, OPTIONS[name].default)

        keys = KeySchema(
            get("prefix") or settings.key_prefix,
            get("index_shards") or (16 if cluster else 1),
            settings.pool is not None,
        )
        client_kwargs = {
            name: get(name)
            for name, option in OPTIONS.items()
            if option.for_client and name != "retries" and get(name) is not None
        }
        return cls(
            url=url.display,
            client_url=_client_url(url, rest, cluster),
            secrets=url.secrets,
            cluster=cluster,
            keys=keys,
            chunk_size=get("chunk_size"),
            retries=get("retries"),
            client_kwargs=client_kwargs,
            tombstone_ttl_ms=round(settings.tombstone_ttl_seconds * 1000),
        )

    def __str__(self) -> str:
        return self.url


def _options(url: StoreURL) -> tuple[dict[str, Any], dict[str, str]]:
    """This library's options, converted, and redis-py's, checked; anything else refused."""
    values: dict[str, Any] = {}
    rest: dict[str, str] = {}
    for name, text in url.query.items():
        option = OPTIONS.get(name)
        parse = option.parse if option is not None else PASSED.get(name)
        if parse is None:
            raise ConfigError(_unknown(url, name))
        if name in _TLS and url.scheme != TLS_SCHEME:
            raise ConfigError(f"redis URL option {name} in {url} needs TLS: use rediss://")
        if name == "socket_keepalive" and url.scheme == "unix":
            raise ConfigError(f"redis URL option {name} in {url} needs TCP, not unix://")
        shown = "***" if name in ("password", "ssl_password") else repr(text)
        try:
            converted = parse(text)
        except ValueError as exc:
            reason = str(exc) if shown != "***" else "not valid"
            raise ConfigError(f"redis URL option {name}={shown} in {url}: {reason}") from None
        if option is None:
            rest[name] = text
        else:
            values[name] = converted
    return values, rest


def _unknown(url: StoreURL, name: str) -> str:
    """The message for an option nobody takes: the closest known name, and every one."""
    known = sorted({*OPTIONS, *PASSED})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = redact(url.text.split("?", 1)[0])  # the values of an unknown option stay unseen
    return (
        f"unknown redis URL option {name[:40]!r} in {where}{hint}; "
        f"known options: {', '.join(known)}"
    )


def _check_database(url: StoreURL, db: str | None, cluster: bool) -> None:
    """A ``/N`` path is the database number; a cluster has only database 0."""
    if url.scheme == "unix":
        if not url.path.strip("/"):
            raise ConfigError(f"redis URL {url} names no socket: unix:///path/to/redis.sock")
        return
    match = _DB_PATH.fullmatch(url.path)
    if match is None:
        raise ConfigError(f"the path of redis URL {url} must be a database number, as in /0")
    number = match.group(1)
    if cluster and int(db or number or 0) != 0:
        raise ConfigError(f"redis URL {url}: Redis Cluster has database 0 only")


def _client_url(url: StoreURL, rest: Mapping[str, str], cluster: bool) -> str:
    """The URL without this library's options, in the scheme redis-py knows."""
    parts = urlsplit(url.text)
    scheme = "redis" if cluster else parts.scheme
    query = f"?{urlencode(rest)}" if rest else ""
    return f"{scheme}://{parts.netloc}{parts.path}{query}"  # geturl() drops unix:// slashes
