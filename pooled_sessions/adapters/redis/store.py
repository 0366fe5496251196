# generated from store_async.py by scripts/unasync.py; do not edit
"""``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``: sessions as Redis hashes.

The store runs the plans of `plan` over the keys of `keys`, through ``redis``.
Every server sharing a prefix shares the sessions, and `watch` tells a service which of its
cached sessions another server ended or changed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from pooled_sessions.adapters.redis import events, plan, probe
from pooled_sessions.adapters.redis.base import LOCK_POLL_SECONDS, POLICY, RedisBase, packed
from pooled_sessions.adapters.url import StoreURL
from pooled_sessions.codec import Operation, Record, WriteResult
from pooled_sessions.config import Settings
from pooled_sessions.errors import SessionError

T = TypeVar("T")


class RedisStore(RedisBase):
    """The Redis store on ``redis``; ``client=`` takes a ready client of it."""

    def __init__(
        self,
        url: StoreURL | str | None = None,
        settings: Settings | None = None,
        *,
        client: Any = None,
    ) -> None:
        super().__init__(url, settings, client, "redis")
        self._listener: events.EventListener | None = None
        self._writing = threading.Lock()
        self._writer: Any = None
        """The connection `_exchange` writes through, taken from the client's pool once
        (unless the pool is small: `RedisBase._keeps_writer`)."""
        self._writer_pid = 0  # the process `_writer` was taken in (a forked child's is not)

    def _exchange(self, commands: list[plan.Command]) -> list[Any]:
        """Send ``commands`` and read their replies (an error in place of each refused one)
        on the connection the store keeps for its writes, as redis-py's pipeline does,
        retries included, without its per-call bookkeeping, which costs a commit about
        as much CPU as the round trip. One server only: a cluster routes each command."""
        with self._writing:
            pool = self._client.connection_pool
            conn = self._writer if self._writer_pid == os.getpid() else None  # a fork's: not ours
            if conn is None:
                conn = pool.get_connection()
                if self._keeps_writer:
                    self._writer, self._writer_pid = conn, os.getpid()
            refused = self._redis.exceptions.ResponseError

            def attempt() -> list[Any]:
                conn.send_packed_command(packed(conn, commands))
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except refused as exc:  # the rest are still read: the socket stays in step
                        replies.append(exc)
                return replies

            def dropped(_error: Exception) -> None:
                conn.disconnect()  # the retry connects again

            try:
                replies: list[Any] = conn.retry.call_with_retry(attempt, dropped)
                return replies
            except BaseException:  # stopped between two replies: the rest stay unread
                conn.disconnect()
                raise
            finally:
                if conn is not self._writer:
                    pool.release(conn)

    def _run(self, step: plan.Step[T], *, writes: bool = False) -> T:
        """Run ``step``'s pipelines; ``writes`` through `_exchange` where it can."""
        replies: Any = None
        try:
            while True:
                commands = step.send(replies)
                if writes and self._exchanges:
                    replies = self._exchange(commands)
                    continue
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command, **self._route(command))
                replies = pipe.execute(raise_on_error=False)
        except StopIteration as stop:
            result: T = stop.value
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            step.close()
        if not self._policy_checked:
            self._check_eviction_policy()
        return result

    def _check_eviction_policy(self) -> None:
        """Read ``maxmemory-policy`` (of every master of a cluster) once, after the first
        call that reached Redis, and warn if Redis may evict session keys."""
        self._policy_checked = True
        try:
            reply = self._client.config_get(POLICY, **self._policy_nodes())
        except Exception as exc:
            self._policy_unread(exc)
        except BaseException:  # cancelled: look again after the next call
            self._policy_checked = False
            raise
        else:
            self._note_policy(reply)

    def check(self) -> None:
        """Raise `StoreUnavailableError` saying why unless Redis takes a write under the
        prefix (unreachable, authentication failed, read-only replica, ...): one round trip."""
        try:
            self._run(probe.check(self.keys, self._origin))
        except SessionError as exc:
            raise self._unusable(exc) from None

    def load(self, session_id: str) -> Record | None:
        return self._run(plan.load(self.keys, session_id, self.where))

    def load_user(self, username: str) -> Mapping[str, Record]:
        return self._run(plan.load_user(self.keys, username, self.where))

    def load_hashes(self, session_ids: Sequence[str]) -> list[dict[Any, Any]]:
        """Several sessions' hashes as stored, undecoded, in one round trip (for verify)."""
        return self._run(plan.load_hashes(self.keys, session_ids, self.options.cluster))

    def ended(self, session_id: str) -> bool:
        """True if ``session_id`` was ended, by any server (its tombstone is kept)."""
        return self._run(plan.ended(self.keys, session_id))

    def write(self, operations: Sequence[Operation], now: float) -> WriteResult:
        return self._run(self._write_plan(operations, now), writes=True)

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

    def watch(self, callback: events.Callback) -> events.CatchUp:
        """Call ``callback(ids, ended)`` when other servers end or change sessions (``ids``
        None: anything may have changed), from the listener: a task in the loop's thread,
        or a thread of its own for the blocking store; it must not block. Waits briefly for
        the subscription; if Redis is down, the listener keeps trying in the background.

        Returns the listener's ``catch_up``: a driver calls it before each call reads the
        cache, so events already received are applied first (an asyncio one awaits what
        it returns, when it returns something)."""
        if self._listener is not None:
            raise SessionError(f"{self.where} is already watched")
        subscription = self._subscription(callback)
        self._listener = events.EventListener(self._events_client, self.keys.channel, subscription)
        self._listener.start(self._subscribe_wait())
        return self._listener.catch_up

    def close(self) -> None:
        """Stop listening, then close the client if this store opened it."""
        if self._listener is not None:
            self._listener.stop(lambda: self._client.publish(self.keys.channel, self._wake))
            self._listener = None
        writer, self._writer = self._writer, None
        if writer is not None and self._writer_pid == os.getpid():
            self._client.connection_pool.release(writer)
        if self._owns_client:
            self._client.close()
            self._close_node_pools()
