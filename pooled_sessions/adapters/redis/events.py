"""Invalidation events: a subscriber that tells the service which cached sessions to drop.

Every write script publishes the ids it ended or changed on the store's channel (see
`redis_keys`). A listener subscribes to it and calls ``callback(ids, ended)``; after any
gap in the subscription (a reconnect) it calls ``callback(None, False)``, since events
sent meanwhile are lost: the service then re-reads what it had cached.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import select
import socket
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from pooled_sessions.adapters.redis.plan import parse_event
from pooled_sessions.redaction import scrub

Callback = Callable[[Collection[str] | None, bool], None]
CatchUp = Callable[[], None]
"""What a blocking store's ``watch`` returns: applies the events already received."""
AsyncCatchUp = Callable[[], Awaitable[None] | None]
"""What an asyncio store's ``watch`` returns: None, or an awaitable that applies them."""
logger = logging.getLogger("session_service")
FIRST_DELAY, MAX_DELAY, POLL_SECONDS = 0.05, 2.0, 0.5
CATCH_UP_WAIT = 0.02
"""Longest a call waits for the listener to finish what it is reading (`catch_up`)."""
CATCH_UP_TURNS = 4
"""Loop turns an asyncio call gives its listener to apply the events waiting: the bytes
reach the stream in one, the listener parses them in the next."""
MESSAGE_HEADS = (b"*3\r\n$7\r\nmessage\r\n$", b">3\r\n$7\r\nmessage\r\n$")
"""How a pub/sub message begins, up to its channel's length (RESP2 array, RESP3 push)."""
MESSAGE_HEAD = len(MESSAGE_HEADS[0])
PEEK_BYTES = 65536
"""Most bytes `catch_up` looks at to tell this process's own events from others'."""
REST_SECONDS, REST_LIMIT_SECONDS = 0.005, 0.05
"""The blocking listener's pauses (up to the limit in a row) while the process's own calls
catch up before each read, or after it read this process's own events: it then wakes once
per burst instead of once per event, where each wake cost the calls GIL hand-overs and
pre-emptions. Reads do not wait for it (`catch_up`); an idle process is not slowed."""


class Subscription:
    """What a listener does with each pub/sub message, sync or asyncio alike."""

    def __init__(
        self, origin: str, callback: Callback, where: str, secrets: Sequence[str] = ()
    ) -> None:
        self.origin = origin
        self.own = f'"o":"{origin}"'.encode()
        """What only this store's own events hold (`parse_event` reads the same key)."""
        self.heard_own = False
        """An event of this store's own was read since the listener last looked."""
        self.callback = callback
        self.where = where
        self.secrets = secrets
        self.subscribed = False
        self.gap = False
        self.delay = FIRST_DELAY

    def took(self, response: Any) -> bool:
        """Act on ``response``, as the client's parser read it, if it is a message (its
        payload: `event`); False for anything else, which goes to the client's own
        ``handle_message`` and then `handle`."""
        payload = _message_payload(response)
        if payload is None:
            return False
        self.event(payload)
        return True

    def handle(self, message: dict[str, Any] | None) -> bool:
        """Act on what the client made of a reply that is not a message (`took` takes
        those); True once the subscription is confirmed."""
        if message is not None and message["type"] == "subscribe":
            if self.gap or self.subscribed:  # a reconnect re-subscribed: events were lost
                self.callback(None, False)
            self.subscribed, self.gap, self.delay = True, False, FIRST_DELAY
        return self.subscribed

    def event(self, data: bytes | str) -> None:
        """Act on one event: this store's own is only noted; another's ids are dropped."""
        if self.own in (data if isinstance(data, bytes) else data.encode()):
            self.heard_own = True
            return
        parsed = parse_event(data, self.origin)
        if parsed is not None:
            ended, changed = parsed
            if ended:
                self.callback(ended, True)
            if changed:
                self.callback(changed, False)

    def failed(self, exc: BaseException) -> float:
        """The subscription broke; returns how long to wait before subscribing again."""
        if not self.gap:
            shown = scrub(str(exc), self.secrets)
            logger.warning("session events from %s interrupted: %s", self.where, shown)
        self.gap, self.subscribed = True, False
        delay, self.delay = self.delay, min(self.delay * 2, MAX_DELAY)
        return delay


class EventListener:
    """A daemon thread reading the channel; the callback runs on that thread, or on a
    caller's that catches up (`catch_up`).

    ``client`` is called for the client to subscribe with, each time it (re)subscribes.
    Every read of the subscription happens under one lock, in `_drain`, so a caller can
    apply the events already received before it serves a cached copy.
    """

    def __init__(self, client: Callable[[], Any], channel: str, subscription: Subscription) -> None:
        self._client = client
        self._channel = channel
        self._sub = subscription
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._reading = threading.Lock()
        self._watched: tuple[Any, int] | None = None
        """The live subscription and its socket's descriptor, once subscribed."""
        self._own = 0
        """How many bytes at the head of the socket `catch_up` found to be own events."""
        self._whole = False
        """The subscription's reader stopped between messages (see `_take_events`)."""
        self._peeked = bytearray(PEEK_BYTES)
        self._asked = False
        """A caller caught up since the listener last looked: callers are busy and apply
        what waits before each read, so the listener rests rather than wake for each event."""
        self._thread = threading.Thread(
            target=self._run, name="pooled-sessions-events", daemon=True
        )

    def catch_up(self) -> None:
        """Apply every event Redis has already delivered to this process, in this thread.

        A change committed by another worker is published before that worker's call
        returns, so by the time a request caused by that return reaches this process, its
        event is in this subscription's socket (or being handled): this applies it before
        the caller reads the cache. Events of this process's own commits are left to the
        listener, which reads them in batches, so the common case is one ``ioctl``: nothing
        waits but events already found to be our own. That a caller came by lets the
        listener rest (`_rest`).
        """
        self._asked = True
        watched = self._watched
        if watched is None:
            return
        pubsub, fd = watched
        unread = _unread(fd)
        if unread in (0, self._own) and not self._reading.locked():
            return  # looked at after the socket: a reader that took the bytes has applied them
        if not self._reading.acquire(timeout=CATCH_UP_WAIT):
            return  # the listener is stuck (a reconnect): the call goes on without it
        try:  # the listener reads nothing meanwhile, so waiting bytes stay waiting
            if watched is self._watched and _unread(fd) > self._own:
                waiting = _peek(pubsub, self._peeked)
                if waiting is None:
                    self._drain(pubsub)
                elif waiting:
                    self._own = _own_events(self._peeked, waiting, self._sub.own, self._own)
                    if self._own < waiting or waiting == len(self._peeked):  # more may follow
                        self._drain(pubsub)
        except Exception:  # the listener's own read fails too, and reconnects
            self._whole = False  # a read cut short may have left half a message parsed
        finally:
            self._reading.release()

    def _drain(self, pubsub: Any) -> None:
        """Handle every message received, without waiting for more (holding `_reading`)."""
        self._own = 0
        if self._take_events(pubsub):
            return
        while pubsub.subscribed and (response := pubsub.parse_response(block=False, timeout=0)):
            if not self._sub.took(response) and self._sub.handle(pubsub.handle_message(response)):
                self._ready.set()

    def _take_events(self, pubsub: Any) -> bool:
        """`read_events` on the subscription's socket, when its next byte starts a message:
        the client's reader (hiredis) holds no bytes and no read was cut short since the
        subscription began (the client's own reads take whole messages)."""
        sock = _socket(pubsub)
        if not self._whole or sock is None or not _parsed_all(getattr(pubsub, "connection", None)):
            return False
        return read_events(sock, self._peeked, self._sub)

    def start(self, wait: float) -> bool:
        """Start listening; True if subscribed within ``wait`` seconds."""
        self._thread.start()
        return self._ready.wait(wait)

    def stop(self, wake: Callable[[], Any]) -> None:
        """Stop listening; ``wake`` publishes a message of our own so the read returns now."""
        self._stop.set()
        _quietly(wake)
        self._thread.join(POLL_SECONDS * 4)

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._client().pubsub()
                with self._reading:
                    pubsub.subscribe(self._channel)
                    self._whole = True
                while not self._stop.is_set():
                    with self._reading:
                        self._drain(pubsub)
                        self._watch(pubsub)
                    if self._sub.handle(None):
                        self._ready.set()
                    self._rest()
                    _wait_readable(pubsub, POLL_SECONDS)
            except Exception as exc:  # reconnect on anything; the service must hear again
                self._stop.wait(self._sub.failed(exc))
            finally:
                if pubsub is not None:
                    with self._reading:
                        self._watched = None
                        _quietly(pubsub.close)

    def _rest(self) -> None:
        """Pause while calls catch up by themselves, or after this process's own events;
        at most `REST_LIMIT_SECONDS` in a row, so a subscription Redis closed is noticed."""
        deadline = time.monotonic() + REST_LIMIT_SECONDS
        while self._sub.heard_own or self._asked:
            self._sub.heard_own = self._asked = False
            if self._stop.wait(REST_SECONDS) or time.monotonic() >= deadline:
                return

    def _watch(self, pubsub: Any) -> None:
        """Keep `catch_up` on the subscription's current socket (the client makes a new one
        when it reconnects by itself)."""
        sock = _socket(pubsub)
        fd = -1 if sock is None else sock.fileno()
        if fd < 0:
            self._watched = None
        elif self._watched != (pubsub, fd):
            self._watched = (pubsub, fd)


class AsyncEventListener:
    """An asyncio task reading the channel; the callback runs in the event loop.

    ``client`` is awaited for the client to subscribe with, each time it (re)subscribes.
    """

    def __init__(
        self, client: Callable[[], Awaitable[Any]], channel: str, subscription: Subscription
    ) -> None:
        self._client = client
        self._channel = channel
        self._sub = subscription
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watched: tuple[Any, int] | None = None
        """The subscription's connection and its socket's descriptor, once subscribed."""
        self._sock: socket.socket | None = None
        """A duplicate of that socket, to read events through (`read_events`); None on TLS."""
        self._peeked = bytearray(PEEK_BYTES)

    def catch_up(self) -> Awaitable[None] | None:
        """Before a call reads the cache: None when no event waits for this process, else
        an awaitable that lets the listener apply those waiting first.

        The event of a change committed by another worker reaches this process's socket
        before that worker's call returns, but the listener is a task: a request caused by
        that return may be served before the loop hands it the bytes. One ``ioctl`` when
        nothing waits; otherwise the call reads the waiting events itself, as bytes
        (`_read_waiting`), or, where it cannot (part of them already in the stream, or
        TLS), gives the listener a few loop turns to read them.
        """
        watched = self._watched
        if watched is None or not _waiting(*watched) or self._read_waiting(watched[0]):
            return None
        return self._applied(watched)

    def _read_waiting(self, connection: Any) -> bool:
        """`read_events` straight from the socket, in this call, when its next byte starts
        a message: nothing waits in the connection's stream, nor in its reader (hiredis).
        True when every waiting byte was read so."""
        stream = getattr(connection, "_reader", None)
        if self._sock is None or getattr(stream, "_buffer", True) or not _parsed_all(connection):
            return False
        try:
            return read_events(self._sock, self._peeked, self._sub)
        except OSError:  # the listener's own read fails too, and reconnects
            return False

    async def _applied(self, watched: tuple[Any, int]) -> None:
        for _ in range(CATCH_UP_TURNS):
            await asyncio.sleep(0)
            if self._watched is not watched or not _waiting(*watched):
                return

    async def start(self, wait: float) -> bool:
        """Start listening; True if subscribed within ``wait`` seconds."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            pubsub = None
            try:
                pubsub = (await self._client()).pubsub()
                await pubsub.subscribe(self._channel)
                while True:
                    self._watch(pubsub)
                    response = await pubsub.parse_response(block=False, timeout=POLL_SECONDS)
                    if not self._sub.took(response) and self._sub.handle(
                        await pubsub.handle_message(response)
                    ):
                        self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnect on anything; the service must hear again
                await asyncio.sleep(self._sub.failed(exc))
            finally:
                self._watch(None)
                if pubsub is not None:
                    await asyncio.shield(aquietly(pubsub.aclose))

    def _watch(self, pubsub: Any) -> None:
        """Keep `catch_up` on the subscription's current connection and socket."""
        connection = getattr(pubsub, "connection", None)
        writer = getattr(connection, "_writer", None)
        sock = None if writer is None else writer.get_extra_info("socket")
        fd = -1 if sock is None else sock.fileno()
        if self._watched == (connection, fd):
            return
        if self._sock is not None:
            self._sock.close()
        self._watched = self._sock = None
        if writer is not None and sock is not None and fd >= 0:
            self._watched = (connection, fd)
            if writer.get_extra_info("sslcontext") is None and callable(getattr(sock, "dup", None)):
                self._sock = sock.dup()  # TLS bytes are the transport's to decrypt


def _waiting(connection: Any, fd: int) -> bool:
    """True when bytes wait for an asyncio subscription: in its socket, or already read
    into its stream but not yet parsed (the listener task has not run since)."""
    reader = getattr(connection, "_reader", None)
    return bool(getattr(reader, "_buffer", None)) or _unread(fd) > 0


def read_events(sock: Any, into: bytearray, sub: Subscription) -> bool:
    """Read the pub/sub messages at the head of ``sock`` as bytes (through ``into``) and
    act on their payloads; True when it read some and the socket is then empty (an empty
    socket found first may be one Redis closed: the client finds out, and reconnects).

    Every process hears every other's commits, and its own: redis-py's ``get_message``
    took about 15 µs an event, its parser alone 5.6 µs (`_message_payload`), one read of
    a burst as bytes less for each. The caller makes sure the socket's next byte starts a
    message; what is not a whole message (a reply, a message cut short) is left to the
    client."""
    taken = False
    while _unread(sock.fileno()) > 0:
        waiting = _peek_at(sock, into)
        if not waiting:
            return False
        end, payloads = _messages(into, waiting)
        if end == 0:
            return False
        if sock.recv_into(into, end) != end:
            raise ConnectionError("the subscription's socket gave fewer bytes than it held")
        taken = True
        for payload in payloads:
            sub.event(payload)
        if end < waiting:
            return False
    return taken


def _message_payload(response: Any) -> bytes | str | None:
    """The payload of a pub/sub message as the client read it (kind, channel, payload), or
    None for anything else (a confirmation, a pong, nothing), which the client's own
    ``handle_message`` turns into its dict. What ``get_message`` does, without the dict and
    the client's per-message bookkeeping: 5.6 µs a message, against 14.7 µs."""
    if isinstance(response, list) and len(response) == 3 and response[0] in (b"message", "message"):
        payload: bytes | str = response[2]
        return payload
    return None


def _parsed_all(connection: Any) -> bool:
    """True when the client's reader (hiredis) holds no bytes of a reply or message; False
    for a reader that cannot say (not hiredis)."""
    reader = getattr(getattr(connection, "_parser", None), "_reader", None)
    has_data = getattr(reader, "has_data", None)
    return callable(has_data) and not has_data()


def _socket(pubsub: Any) -> Any:
    """The subscription's socket, or None (not connected, or a client without one)."""
    connection = getattr(pubsub, "connection", None)
    return getattr(connection, "_sock", None)


def _unread(fd: int) -> int:
    """How many bytes wait in socket ``fd`` (no read, no wait); 0 when it is closed."""
    count = array.array("i", (0,))
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count, True)
    except OSError:
        return 0  # closed under us: the listener reconnects
    return count[0]


def _peek(pubsub: Any, into: bytearray) -> int | None:
    """How many bytes wait in the readable subscription socket, copied into ``into`` and
    left unread; None when they cannot be peeked at (TLS). 0 when Redis closed it: reading
    it now would make the client reconnect, with its retries, in the caller's thread; the
    listener does that. Only for a socket found readable, so the peek returns at once."""
    return _peek_at(_socket(pubsub), into)


def _peek_at(sock: Any, into: bytearray) -> int | None:
    """`_peek` on a socket (None: not connected)."""
    try:
        return 0 if sock is None else int(sock.recv_into(into, len(into), socket.MSG_PEEK))
    except ValueError:
        return None  # TLS: no peeking; a closed socket is found by the listener
    except OSError:
        return 0


def _own_events(data: bytearray, end: int, own: bytes, at: int) -> int:
    """The end of the whole pub/sub messages from ``at`` on in ``data[:end]`` that are
    events holding ``own``: where the first other message, or one cut short, begins."""
    while at < end and (found := _message_at(data, at, end)) is not None and own in found[1]:
        at = found[0]
    return at


def _messages(data: bytearray, end: int) -> tuple[int, list[bytes]]:
    """The end of the whole pub/sub messages at the head of ``data[:end]``, and their
    payloads."""
    at, payloads = 0, []
    while at < end and (found := _message_at(data, at, end)) is not None:
        at = found[0]
        payloads.append(found[1])
    return at, payloads


def _message_at(data: bytearray, at: int, end: int) -> tuple[int, bytes] | None:
    """Where the pub/sub message starting at ``at`` in ``data[:end]`` ends (a RESP2 array
    or RESP3 push of kind, channel and payload), and its payload; None for anything else
    or a message cut short."""
    if not data.startswith(MESSAGE_HEADS, at, end):
        return None
    try:
        eol = data.index(b"\r\n", at + MESSAGE_HEAD, end)
        payload_at = eol + 2 + _length(data[at + MESSAGE_HEAD : eol]) + 2  # past the channel
        if payload_at >= end or data[payload_at] != 0x24:  # "$": a bulk string
            return None
        eol = data.index(b"\r\n", payload_at + 1, end)
        after = eol + 2 + _length(data[payload_at + 1 : eol]) + 2
    except ValueError:  # a line cut short, or not a length
        return None
    if after > end:
        return None
    return after, bytes(data[eol + 2 : after - 2])


def _length(digits: bytearray) -> int:
    """A bulk string's length as RESP writes it: ASCII digits only (ValueError else)."""
    if not digits.isdigit():
        raise ValueError(f"not a length: {bytes(digits)!r}")
    return int(digits)


def _wait_readable(pubsub: Any, timeout: float) -> None:
    """Wait up to ``timeout`` for bytes on the subscription's socket (reading none)."""
    sock = _socket(pubsub)
    if sock is None:
        time.sleep(min(timeout, 0.01))  # not connected yet: the next read connects
        return
    select.select([sock], [], [], timeout)


def next_node(nodes: Sequence[Any], current: str) -> Any:
    """The node after the one named ``current``, in name order (the first if it is gone)."""
    ordered = sorted(nodes, key=lambda node: str(node.name))
    names = [str(node.name) for node in ordered]
    return ordered[(names.index(current) + 1) % len(ordered) if current in names else 0]


def _quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception:  # closing a broken connection may fail too; nothing to keep
        pass


async def aquietly(close: Callable[[], Any]) -> None:
    """Await ``close()``, ignoring its failure (a broken connection may fail to close)."""
    try:
        await close()
    except Exception:  # closing a broken connection may fail too; nothing to keep
        pass
