"""``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``: sessions as Redis hashes.

Both stores run the same plans (`redis_plan`) over the same keys (`redis_keys`); they
only differ in how a pipeline is sent. Every server sharing a prefix shares the sessions,
and `watch` tells a service which of its cached sessions another server ended or changed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from pooled_sessions.adapters.redis import plan
from pooled_sessions.adapters.redis.events import (
    AsyncEventListener,
    Callback,
    EventListener,
    Subscription,
    aquietly,
    next_node,
)
from pooled_sessions.adapters.redis.options import CLUSTER_SCHEME, RedisOptions
from pooled_sessions.adapters.url import StoreURL, redact
from pooled_sessions.codec import Operation, Record, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.errors import (
    ConfigError,
    MissingDependencyError,
    SessionError,
    StoreError,
    StoreUnavailableError,
)

T = TypeVar("T")
INSTALL_HINT = 'pip install "pooled-sessions[redis]"'
LOCK_POLL_SECONDS, LOCK_MIN_SECONDS = 0.005, 1.0


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
    return redis


def _client_url(client: Any, aio: bool) -> str:
    """A URL describing a ready client, for messages and `url`."""
    redis = _redis()
    cluster_type = redis.asyncio.cluster.RedisCluster if aio else redis.cluster.RedisCluster
    if isinstance(client, cluster_type):
        node = client.get_default_node()
        return f"{CLUSTER_SCHEME}://{node.host}:{node.port}"
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _build_client(options: RedisOptions, aio: bool) -> Any:
    redis = _redis()
    retry_type = redis.asyncio.retry.Retry if aio else redis.retry.Retry
    retry = retry_type(redis.backoff.ExponentialBackoff(cap=1.0, base=0.05), options.retries)
    if options.cluster:
        kind = redis.asyncio.cluster.RedisCluster if aio else redis.cluster.RedisCluster
    else:
        kind = redis.asyncio.Redis if aio else redis.Redis
    try:
        return kind.from_url(options.client_url, retry=retry, **options.client_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot open {options}: {exc}") from None
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        # a cluster client reads the slot map at once
        raise StoreUnavailableError(f"redis {options} is unavailable: {exc}") from exc


class _RedisBase:
    """What both stores share: options, keys, an origin token, error translation."""

    def __init__(
        self, url: StoreURL | str | None, settings: Settings | None, client: Any, aio: bool
    ) -> None:
        settings = settings or Settings()
        if url is None:
            if client is None:
                raise SessionError("a Redis store needs a URL or a client")
            url = _client_url(client, aio)
        parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
        self.options = RedisOptions.parse(parsed, settings)
        self.url = parsed.text
        self.keys = self.options.keys
        self.where = f"redis {redact(parsed.text)}"
        self._origin = secrets.token_hex(8)
        self._owns_client = client is None
        self._client = client if client is not None else _build_client(self.options, aio)
        self._redis = _redis()
        self._node_name = ""  # the cluster node the events listener subscribes through

    def _failure(self, exc: Exception) -> SessionError:
        """The error a caller sees: unavailable (retry later) or a plain store error."""
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
        if isinstance(exc, down) or "LOADING" in str(exc) or "MASTERDOWN" in str(exc):
            return StoreUnavailableError(f"{self.where} is unavailable: {exc}")
        return StoreError(f"{self.where} failed: {type(exc).__name__}: {exc}")

    def _write_plan(self, operations: Sequence[Operation], now: float) -> plan.Step[WriteResult]:
        o = self.options
        return plan.write(
            self.keys, operations, now, self._origin, o.tombstone_ttl_ms, o.chunk_size, o.cluster
        )

    @property
    def _wake(self) -> str:
        """An event that carries no ids, from this store: every listener ignores it."""
        return json.dumps({"o": self._origin})

    def _subscription(self, callback: Callback) -> Subscription:
        return Subscription(self._origin, callback, self.where)

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


class RedisStore(_RedisBase):
    """Blocking store on redis-py; pass ``client=`` to use a ready ``Redis``/``RedisCluster``."""

    def __init__(
        self,
        url: StoreURL | str | None = None,
        settings: Settings | None = None,
        *,
        client: Any = None,
    ) -> None:
        super().__init__(url, settings, client, aio=False)
        self._listener: EventListener | None = None

    def _run(self, step: plan.Step[T]) -> T:
        replies: Any = None
        try:
            while True:
                commands = step.send(replies)
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command, **self._route(command))
                replies = pipe.execute(raise_on_error=False)
        except StopIteration as stop:
            result: T = stop.value
            return result
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            step.close()

    def _route(self, command: plan.Command) -> dict[str, Any]:
        """On a cluster, the node of a script call, from its first key: redis-py's cluster
        pipeline would otherwise ask the server (COMMAND GETKEYS) once per script call."""
        if not self.options.cluster or command[0] not in ("EVALSHA", "EVAL"):
            return {}
        return {"target_nodes": self._client.get_node_from_key(command[3])}

    def load(self, session_id: str) -> Record | None:
        return self._run(plan.load(self.keys, session_id, self.where))

    def load_user(self, username: str) -> Mapping[str, Record]:
        return self._run(plan.load_user(self.keys, username, self.where))

    def ended(self, session_id: str) -> bool:
        """True if ``session_id`` was ended, by any server (its tombstone is kept)."""
        return self._run(plan.ended(self.keys, session_id))

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        return self._run(self._write_plan(operations, now))

    def purge_expired(self, now: float) -> int:
        return self._run(plan.purge(self.keys, now))

    def poll(self) -> bool:
        """Always False: changes by other servers arrive through `watch`."""
        return False

    def scan(self) -> Iterator[tuple[str, Record]]:
        for shard in self.keys.all_shards():
            cursor = 0
            while True:
                cursor, page = self._run(plan.scan_page(self.keys, shard, cursor, self.where))
                yield from page
                if cursor == 0:
                    break

    def count(self) -> int:
        return self._run(plan.count(self.keys, time.time()))

    def claim_slot(
        self, session_id: str, expires_at: float, limit: int, replaces: Sequence[str] = ()
    ) -> bool:
        """Take one of ``limit`` live-session slots shared by every server (the pool's
        ``max_total`` across servers); False when all are held. Needs a pool configured.

        ``replaces``: sessions this server ended; the slot one of them still holds (its
        end not written yet) is handed over to ``session_id``."""
        step = plan.claim_slot(self.keys, session_id, expires_at, time.time(), limit, replaces)
        return self._run(step)

    def slots_in_use(self) -> int:
        """Slots held by live sessions on every server."""
        return self._run(plan.slots_in_use(self.keys, time.time()))

    @contextmanager
    def user_lock(self, username: str, timeout: float = 5.0) -> Iterator[None]:
        """Hold ``username`` exclusively among every server sharing this store (a login).

        Waits up to ``timeout`` seconds, then raises `StoreError`. The lock expires by
        itself after twice that if its holder dies."""
        attempt, release, deadline = self._lock_steps(username, timeout)
        while not self._run(attempt()):
            if time.monotonic() >= deadline:
                raise self._lock_timeout(username, timeout)
            time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            self._run(release)

    def _events_client(self) -> Any:
        """The client to subscribe with: on a cluster, one node's (see `_events_node`)."""
        if not self.options.cluster:
            return self._client
        node = self._events_node(self._client.get_default_node(), self._client.get_nodes())
        return node.redis_connection

    def watch(self, callback: Callback) -> None:
        """Call ``callback(ids, ended)`` from a listener thread when other servers end or
        change sessions (``ids`` None: anything may have changed). Waits briefly for the
        subscription; if Redis is down, the listener keeps trying in the background."""
        if self._listener is not None:
            raise SessionError(f"{self.where} is already watched")
        subscription = self._subscription(callback)
        self._listener = EventListener(self._events_client, self.keys.channel, subscription)
        self._listener.start(self._subscribe_wait())

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop(lambda: self._client.publish(self.keys.channel, self._wake))
            self._listener = None
        if self._owns_client:
            self._client.close()


class AsyncRedisStore(_RedisBase):
    """The asyncio twin on ``redis.asyncio``; ``client=`` takes a ready asyncio client."""

    def __init__(
        self,
        url: StoreURL | str | None = None,
        settings: Settings | None = None,
        *,
        client: Any = None,
    ) -> None:
        super().__init__(url, settings, client, aio=True)
        self._listener: AsyncEventListener | None = None
        self._node: Any = None

    async def _events_client(self) -> Any:
        """The client to subscribe with: on a cluster, a plain client of one node (see
        `_events_node`; the asyncio cluster client has no usable pub/sub)."""
        if not self.options.cluster:
            return self._client
        if self._node is None:
            await self._client.initialize()
        else:
            await aquietly(functools.partial(self._node.aclose, close_connection_pool=True))
        node = self._events_node(self._client.get_default_node(), self._client.get_nodes())
        pool = self._redis.asyncio.ConnectionPool(
            connection_class=node.connection_class, **node.connection_kwargs
        )
        self._node = self._redis.asyncio.Redis(connection_pool=pool)
        return self._node

    async def _run(self, step: plan.Step[T]) -> T:
        replies: Any = None
        try:
            while True:
                commands = step.send(replies)
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except StopIteration as stop:
            result: T = stop.value
            return result
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            step.close()

    async def load(self, session_id: str) -> Record | None:
        return await self._run(plan.load(self.keys, session_id, self.where))

    async def load_user(self, username: str) -> Mapping[str, Record]:
        return await self._run(plan.load_user(self.keys, username, self.where))

    async def ended(self, session_id: str) -> bool:
        return await self._run(plan.ended(self.keys, session_id))

    async def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        return await self._run(self._write_plan(operations, now))

    async def purge_expired(self, now: float) -> int:
        return await self._run(plan.purge(self.keys, now))

    async def poll(self) -> bool:
        """Always False: changes by other servers arrive through `watch`."""
        return False

    async def scan(self) -> AsyncIterator[tuple[str, Record]]:
        for shard in self.keys.all_shards():
            cursor = 0
            while True:
                step = plan.scan_page(self.keys, shard, cursor, self.where)
                cursor, page = await self._run(step)
                for item in page:
                    yield item
                if cursor == 0:
                    break

    async def count(self) -> int:
        return await self._run(plan.count(self.keys, time.time()))

    async def claim_slot(
        self, session_id: str, expires_at: float, limit: int, replaces: Sequence[str] = ()
    ) -> bool:
        """`RedisStore.claim_slot` for asyncio."""
        step = plan.claim_slot(self.keys, session_id, expires_at, time.time(), limit, replaces)
        return await self._run(step)

    async def slots_in_use(self) -> int:
        """Slots held by live sessions on every server."""
        return await self._run(plan.slots_in_use(self.keys, time.time()))

    @asynccontextmanager
    async def user_lock(self, username: str, timeout: float = 5.0) -> AsyncIterator[None]:
        """`RedisStore.user_lock` for asyncio."""
        attempt, release, deadline = self._lock_steps(username, timeout)
        while not await self._run(attempt()):
            if time.monotonic() >= deadline:
                raise self._lock_timeout(username, timeout)
            await asyncio.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            await self._run(release)

    async def watch(self, callback: Callback) -> None:
        """Like `RedisStore.watch`, from a task of the running loop: ``callback`` runs in
        the loop's thread, so it must not block."""
        if self._listener is not None:
            raise SessionError(f"{self.where} is already watched")
        subscription = self._subscription(callback)
        self._listener = AsyncEventListener(self._events_client, self.keys.channel, subscription)
        await self._listener.start(self._subscribe_wait())

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._node is not None:
            await self._node.aclose(close_connection_pool=True)
            self._node = None
        if self._owns_client:
            await self._client.aclose()
