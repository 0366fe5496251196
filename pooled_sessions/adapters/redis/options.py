"""Options of a Redis store URL, converted once through a typed table.

``redis://host:6379/0?socket_timeout=2&max_connections=50&prefix=app``: the options
below are checked and removed; any other query parameter (``ssl_cert_reqs``, ...) goes
to redis-py's ``from_url`` as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from pooled_sessions.adapters.redis.keys import KeySchema
from pooled_sessions.adapters.url import StoreURL, redact
from pooled_sessions.config import Settings
from pooled_sessions.errors import ConfigError

CLUSTER_SCHEME = "redis+cluster"


def _positive(kind: Callable[[str], float | int]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(f"expected a number > 0, got {text!r}")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class Option:
    """One URL option: its parser, default, and whether the client or the store takes it."""

    parse: Callable[[str], Any]
    default: Any
    for_client: bool
    doc: str


OPTIONS: Mapping[str, Option] = {
    "socket_timeout": Option(_positive(float), 5.0, True, "seconds to wait for a reply"),
    "socket_connect_timeout": Option(_positive(float), 2.0, True, "seconds to connect"),
    "max_connections": Option(_positive(int), None, True, "connection pool size"),
    "health_check_interval": Option(
        _positive(int), 30, True, "seconds idle before a connection is checked with PING"
    ),
    "retries": Option(int, 2, True, "retries of a command after a connection error"),
    "client_name": Option(str, "pooled-sessions", True, "CLIENT SETNAME of each connection"),
    "prefix": Option(str, None, False, "key prefix (default: the key_prefix setting)"),
    "index_shards": Option(
        _positive(int), None, False, "expiry index shards (default 1; 16 on a cluster)"
    ),
    "chunk_size": Option(_positive(int), 500, False, "operations per pipeline"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisOptions:
    """Everything a Redis store needs from its URL and settings."""

    url: str
    client_url: str
    cluster: bool
    keys: KeySchema
    chunk_size: int
    retries: int
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tombstone_ttl_ms: int = 86_400_000

    @classmethod
    def parse(cls, url: StoreURL, settings: Settings) -> RedisOptions:
        """Check the URL's own options, and build the URL handed to redis-py."""
        cluster = url.scheme == CLUSTER_SCHEME
        values: dict[str, Any] = {}
        rest: dict[str, str] = {}
        for name, text in url.query.items():
            option = OPTIONS.get(name)
            if option is None:
                rest[name] = text
                continue
            try:
                values[name] = option.parse(text)
            except ValueError as exc:
                raise ConfigError(f"redis URL option {name}={text!r} in {url}: {exc}") from None

        def get(name: str) -> Any:
            return values.get(name, OPTIONS[name].default)

        if get("retries") < 0:
            raise ConfigError(f"redis URL option retries must be >= 0 in {url}")
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
            url=url.text,
            client_url=_client_url(url, rest, cluster),
            cluster=cluster,
            keys=keys,
            chunk_size=get("chunk_size"),
            retries=get("retries"),
            client_kwargs=client_kwargs,
            tombstone_ttl_ms=int(settings.tombstone_ttl_seconds * 1000),
        )

    def __str__(self) -> str:
        return redact(self.url)


def _client_url(url: StoreURL, rest: Mapping[str, str], cluster: bool) -> str:
    """The URL without this library's options, in the scheme redis-py knows."""
    parts = urlsplit(url.text)
    scheme = "redis" if cluster else parts.scheme
    query = f"?{urlencode(rest)}" if rest else ""
    return f"{scheme}://{parts.netloc}{parts.path}{query}"  # geturl() drops unix:// slashes
