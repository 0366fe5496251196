"""What the blocking and the asyncio Redis store share and that does no I/O.

``store_async.py`` holds `AsyncRedisStore`; ``store.py`` (`RedisStore`) is written from it by
``scripts/unasync.py``. Both build on `RedisBase`: options, keys, client, error translation
and the routing of script calls, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pooled_sessions.adapters.redis import plan, probe
from pooled_sessions.adapters.redis.events import Callback, Subscription, next_node
from pooled_sessions.adapters.redis.options import CLUSTER_SCHEME, RedisOptions
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Operation, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.errors import (
    ConfigError,
    MissingDependencyError,
    SessionError,
    StoreError,
    StoreUnavailableError,
)
from pooled_sessions.redaction import Secrets, scrub

INSTALL_HINT = 'pip install "pooled-sessions[redis]"'
REDIS_PY = (5, 3)
"""The oldest redis-py the stores run on (a connection taken from a pool by no command)."""
LOCK_POLL_SECONDS, LOCK_MIN_SECONDS = 0.005, 1.0
SCRIPT_CALLS = ("EVALSHA", "EVAL")
POLICY = "maxmemory-policy"
KEEP_WRITER_FROM = 16
"""The smallest connection pool a store keeps a connection of for its writes."""
EVICTING = ("allkeys-", "volatile-")
"""Policies that may evict session keys: every session hash and tombstone has a TTL, so the
``volatile-*`` ones reach them as well as ``allkeys-*``."""
logger = logging.getLogger("session_service")


def packed(conn: Any, commands: Sequence[plan.Command]) -> list[bytes]:
    """``commands`` in RESP for ``conn``: packed by hiredis in C, as one buffer, where the
    connection would pack the same bytes (`_packs_like_hiredis`); else, or for an argument
    hiredis does not take, by the connection itself."""
    hiredis = _hiredis_packer()
    if hiredis is not None:
        packer_class, pack = hiredis
        if _packs_like_hiredis(conn, packer_class):
            try:
                return [b"".join([pack(command) for command in commands])]
            except TypeError:  # the connection raises redis-py's error for it
                pass
    packed_commands: list[bytes] = conn.pack_commands(commands)
    return packed_commands


def _packs_like_hiredis(conn: Any, packer_class: type) -> bool:
    """True when ``conn`` packs the plans' commands (str, bytes and int arguments) as
    hiredis does: with hiredis' packer (blocking redis-py's default when hiredis is
    installed; its own packer first copies every argument through a generator, about 4 µs
    a commit), or, on ``redis.asyncio``, which always packs in Python (about 10 µs a
    commit, against 1.5), with its encoder's UTF-8 and strict errors, the default."""
    packer = getattr(conn, "_command_packer", None)
    if packer is not None:
        return type(packer) is packer_class
    encoder = getattr(conn, "encoder", None)
    return (
        getattr(encoder, "encoding", None) == "utf-8"
        and getattr(encoder, "encoding_errors", None) == "strict"
    )


@functools.cache
def _hiredis_packer() -> tuple[type, Callable[[plan.Command], bytes]] | None:
    """redis-py's hiredis packer class and hiredis' ``pack_command``, if both are there."""
    try:
        import hiredis
        from redis.connection import HiredisRespSerializer
    except ImportError:
        return None
    return HiredisRespSerializer, hiredis.pack_command


def _redis() -> Any:
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.cluster
        import redis.backoff
        import redis.cluster
        import redis.retry
    except ImportError as exc:
        raise MissingDependencyError(
            f"the Redis store needs the redis package: {INSTALL_HINT}"
        ) from exc
    found = tuple(int(part) for part in re.findall(r"\d+", redis.__version__)[:2])
    if found < REDIS_PY:
        raise MissingDependencyError(
            f"the Redis store needs redis-py {'.'.join(map(str, REDIS_PY))} or later, found "
            f"{redis.__version__}: {INSTALL_HINT}"
        )
    return redis


def _package(name: str) -> Any:
    """The client package ``name`` (``redis`` or ``redis.asyncio``), imported on first open."""
    _redis()
    return importlib.import_module(name)


def _client_url(client: Any, clients: Any) -> str:
    """A URL describing a ready client, for messages and `url`."""
    if isinstance(client, clients.cluster.RedisCluster):
        node = client.get_default_node()
        return f"{CLUSTER_SCHEME}://{node.host}:{node.port}"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _build_client(options: RedisOptions, clients: Any) -> Any:
    redis = _redis()
    retry = clients.retry.Retry(
        redis.backoff.ExponentialBackoff(cap=1.0, base=0.05), options.retries
    )
    kind = clients.cluster.RedisCluster if options.cluster else clients.Redis
    try:
        return kind.from_url(options.client_url, retry=retry, **options.client_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot open {options}: {scrub(str(exc), options.secrets)}") from None
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        # a cluster client reads the slot map at once
        reason = scrubbed(exc, options.secrets)
        raise StoreUnavailableError(f"redis {options} is unavailable: {reason}") from exc


def scrubbed(exc: BaseException, secrets: Sequence[str]) -> str:
    """The text of ``exc``, with credentials taken out of it and of the exceptions it
    chains (in place, so a traceback printed later shows none either)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and secrets:
        seen.add(id(current))
        current.args = tuple(
            scrub(arg, secrets) if isinstance(arg, str) else arg for arg in current.args
        )
        current = current.__cause__ or current.__context__
    return scrub(str(exc), secrets)


def _client_secrets(client: Any) -> tuple[str, ...]:
    """The credentials a ready client was built with (its errors must not show them)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    found = (kwargs.get("password"), kwargs.get("ssl_password"))
    return tuple(value for value in found if isinstance(value, str) and value)


def _policies(reply: Any) -> dict[str, str]:
    """``{node: policy}`` from CONFIG GET's reply: one mapping, or one per cluster node."""
    fields = {_text(k): v for k, v in dict(reply or {}).items()}
    if POLICY in fields:
        return {"": _text(fields[POLICY])}
    return {
        node: policy
        for node, inner in fields.items()
        if isinstance(inner, Mapping)
        for policy in _policies(inner).values()
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBase:
    """What both stores share: options, keys, an origin token, error translation."""

    def __init__(
        self, url: StoreURL | str | None, settings: Settings | None, client: Any, clients: str
    ) -> None:
        """``clients`` names the client package: ``redis`` or ``redis.asyncio``."""
        settings = settings or Settings()
        if url is None:
            if client is None:
                raise SessionError("a Redis store needs a URL or a client")
            url = _client_url(client, _package(clients))
        parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
        self.options = RedisOptions.parse(parsed, settings)
        self.url = parsed.display
        self.keys = self.options.keys
        self.where = f"redis {parsed.display}"
        self._secrets = Secrets((*self.options.secrets, *_client_secrets(client)))
        self._origin = secrets.token_hex(8)
        self._own_ends: dict[str, float] = {}  # see `plan.write`
        self._owns_client = client is None
        if client is None:
            client = _build_client(self.options, _package(clients))
        self._client = client
        self._clients = _package(clients)
        self._exchanges = isinstance(client, self._clients.Redis)
        """Writes go through a connection of the store's own (``_exchange``): a plain
        client of one server; a cluster client, or another object, gets pipelines."""
        limit = getattr(getattr(client, "connection_pool", None), "max_connections", None)
        self._keeps_writer = self._exchanges and (limit is None or limit >= KEEP_WRITER_FROM)
        """A pool of fewer connections lends one for each write instead of losing one."""
        self._redis = _redis()
        self._node_name = ""  # the cluster node the events listener subscribes through
        self.eviction_policy: str | None = None
        """Redis's ``maxmemory-policy``, read after the first call that reached it (on a
        cluster, each master's: ``node=policy`` pairs when they differ); None until then,
        or when the server refuses CONFIG GET."""
        self._policy_checked = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _failure(self, exc: Exception) -> SessionError:
        """The error a caller sees: unavailable (retry later) or a plain store error, with
        no credential in its text or in the text of the exceptions it chains."""
        text = scrubbed(exc, self._secrets)
        if isinstance(exc, SessionError):
            return exc
        errors = self._redis.exceptions
        down = (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.ClusterError,
            errors.RedisClusterException,
            errors.TryAgainError,
            errors.ReadOnlyError,
            errors.BusyLoadingError,
            OSError,
        )
        if isinstance(exc, down) or "LOADING" in text or "MASTERDOWN" in text:
            return StoreUnavailableError(f"{self.where} is unavailable: {text}")
        return StoreError(f"{self.where} failed: {type(exc).__name__}: {text}")

    def _unusable(self, error: SessionError) -> StoreUnavailableError:
        """The start-up check failed: why, in words (the client's error is its cause)."""
        cause = error.__cause__ if error.__cause__ is not None else error
        text = scrubbed(cause, self._secrets)
        reason = probe.reason(cause, text, self._redis.exceptions)
        return StoreUnavailableError(
            f"{self.where} cannot be used: {reason} (checked at start; check_store=False "
            "skips the check)"
        )

    def _policy_nodes(self) -> dict[str, Any]:
        """Where CONFIG GET goes: every master of a cluster (each evicts on its own)."""
        return {"target_nodes": "primaries"} if self.options.cluster else {}

    def _note_policy(self, reply: Any) -> None:
        """Keep what CONFIG GET answered; warn if the policy can evict session keys."""
        found = _policies(reply)
        distinct = sorted(set(found.values()))
        if not distinct:
            logger.debug("%s: CONFIG GET %s answered %r", self.where, POLICY, reply)
            return
        if len(distinct) == 1:
            self.eviction_policy = distinct[0]
        else:
            self.eviction_policy = ", ".join(f"{node}={p}" for node, p in sorted(found.items()))
        evicting = [policy for policy in distinct if policy.startswith(EVICTING)]
        if evicting:
            logger.warning(
                "%s runs with maxmemory-policy %s: when it reaches maxmemory it may evict "
                "session keys, so live sessions vanish before they expire and an ended "
                "session's tombstone can go, after which its id is no longer refused (an "
                "ended session must never come back); set maxmemory-policy noeviction on the "
                "Redis that keeps sessions",
                self.where,
                self.eviction_policy if len(distinct) == 1 else ", ".join(evicting),
            )

    def _policy_unread(self, exc: Exception) -> None:
        """CONFIG GET failed: refused (renamed, disabled, no ACL permission) is final;
        anything else is tried again after the next call."""
        if not isinstance(exc, self._redis.exceptions.ResponseError):
            self._policy_checked = False
        logger.debug("%s: maxmemory-policy not read: %s", self.where, exc)

    def _close_node_pools(self) -> None:
        """Disconnect the node pools of a blocking cluster client: redis-py's ``close``
        leaves open the pools it made for a URL, and their sockets would wait for the
        garbage collector. (The asyncio client's nodes have no such pool.)"""
        if not self.options.cluster:
            return
        for node in self._client.get_nodes():
            connection = getattr(node, "redis_connection", None)
            if connection is not None:
                connection.connection_pool.disconnect()

    def _route(self, command: plan.Command) -> dict[str, Any]:
        """On a cluster, the node of a script call, from its first key: redis-py's blocking
        cluster pipeline would otherwise ask the server (COMMAND GETKEYS) once per script
        call. Before the client has read the slot map (an asyncio cluster client reads it
        on first use), the client finds the node itself."""
        if not self.options.cluster or command[0] not in SCRIPT_CALLS:
            return {}
        try:
            return {"target_nodes": self._client.get_node_from_key(command[3])}
        except self._redis.exceptions.SlotNotCoveredError:
            return {}

    def _write_plan(self, operations: Sequence[Operation], now: float) -> plan.Step[WriteResult]:
        o = self.options
        return plan.write(
            self.keys,
            operations,
            now,
            self._origin,
            o.tombstone_ttl_ms,
            o.chunk_size,
            o.cluster,
            self._own_ends,
        )

    @property
    def _wake(self) -> str:
        """An event that carries no ids, from this store: every listener ignores it."""
        return json.dumps({"o": self._origin})

    def _subscription(self, callback: Callback) -> Subscription:
        return Subscription(self._origin, callback, self.where, self._secrets)

    def _lock_steps(
        self, username: str, timeout: float
    ) -> tuple[Callable[[], plan.Step[bool]], plan.Step[None], float]:
        """The steps of `user_lock`: try (repeatable), release, and the deadline."""
        token, keys = secrets.token_hex(16), self.keys
        ttl_ms = int(max(timeout, LOCK_MIN_SECONDS) * 2000)
        return (
            lambda: plan.lock_user(keys, username, token, ttl_ms),
            plan.unlock_user(keys, username, token),
            time.monotonic() + timeout,
        )

    def _lock_timeout(self, username: str, timeout: float) -> StoreError:
        return StoreError(
            f"{self.where}: user {username[:40]!r} stayed locked by another server for {timeout} s"
        )

    def _events_node(self, default: Any, nodes: Sequence[Any]) -> Any:
        """The cluster node to subscribe through: the default node, then, each time the
        listener asks again (its subscription failed), the next one, so a node that died
        is not tried forever. Classic pub/sub reaches every node, so any will do."""
        node = default if not self._node_name else next_node(nodes, self._node_name)
        self._node_name = str(node.name)
        return node

    def _subscribe_wait(self) -> float:
        return float(self.options.client_kwargs.get("socket_connect_timeout", 2.0)) + 1.0
