"""What a server's cache does when Redis changes under it: sessions the store stopped
listing, and event subscriptions whose cluster node died."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis

from pooled_sessions import AsyncSessionService, SessionService
from pooled_sessions.adapters.redis import events
from pooled_sessions.adapters.redis.events import next_node
from pooled_sessions.adapters.redis.store import RedisStore
from pooled_sessions.adapters.redis.store_async import AsyncRedisStore
from tests.redis_servers import RedisCluster, RedisServer, binary, unique_prefix
from tests.waiting import wait_until


@pytest.fixture
def url(any_redis_url: str) -> str:
    return any_redis_url


def test_sessions_of_drops_cached_sessions_the_store_no_longer_lists(url: str) -> None:
    with SessionService(url) as a, SessionService(url, write_behind=True) as b:
        first, second = a.create_session("alice"), a.create_session("alice")
        a.force_save()
        assert b.sessions_of("alice") == [first, second]  # b holds both now
        store = b._store
        assert isinstance(store, RedisStore)
        store._client.delete(store.keys.session(first))  # Redis expired it: no event is sent
        third = b.create_session("alice")  # not written yet: the store cannot list it
        assert b.sessions_of("alice") == [second, third]
        assert b.get_session(first) is None and b.stats()["live_sessions"] == 2
        b.force_save()
        assert a.sessions_of("alice") == [second, third]


def test_a_change_committed_elsewhere_is_seen_though_the_listener_sleeps(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-modify-write alternating between servers on one Redis while both listener
    threads sleep: each call first applies the events already in its socket, so the
    other's change is seen (at once, unless Redis itself is slow to deliver the event:
    the read is retried briefly for that, never for the listener, which sleeps 30 s)."""
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid, other = a.create_session("alice", {"cart": []}), a.create_session("bob")
        assert b.get_session(sid) is not None  # cached in b
        monkeypatch.setattr(events, "_wait_readable", lambda pubsub, timeout: time.sleep(30))
        a.update_session(other, {"n": 1})  # wakes b's listener, which then sleeps
        time.sleep(0.2)
        for item in range(6):
            writer, reader = (a, b) if item % 2 else (b, a)
            session = writer.get_session(sid)
            assert session is not None
            assert writer.update_session(sid, {"cart": [*session.attributes["cart"], item]})

            def seen(reader: SessionService = reader, item: int = item) -> bool:
                session = reader.get_session(sid)
                return session is not None and session.attributes["cart"] == list(range(item + 1))

            assert wait_until(seen, timeout=1.0)


@pytest.mark.parametrize("caught_up", [True, False], ids=["catch-up", "without"])
async def test_an_asyncio_read_applies_the_events_already_received(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caught_up: bool
) -> None:
    """Another server's change, whose event is already in this process's socket, is seen
    by an asyncio read though the listener task has not run since: the read lets it run
    first. Here the loop is held while the other server writes (as while a request
    arrives), so without that catch-up every read is stale."""
    if not caught_up:
        monkeypatch.setattr(events.AsyncEventListener, "catch_up", lambda self: None)
    async with AsyncSessionService(redis_url) as b:
        with SessionService(redis_url) as a:
            sid = a.create_session("alice", {"n": 0})
            session = await b.get_session(sid)  # cached in b
            assert session is not None and session.attributes == {"n": 0}
            listener = b._store._listener  # type: ignore[attr-defined]
            assert listener is not None and listener._watched is not None
            _, fd = listener._watched
            stale = 0
            for n in range(1, 31):
                assert a.update_session(sid, {"n": n})  # b's loop is held meanwhile
                deadline = time.monotonic() + 1.0  # the event on its way to b's socket
                while events._unread(fd) == 0 and time.monotonic() < deadline:
                    pass
                session = await b.get_session(sid)
                assert session is not None
                stale += session.attributes != {"n": n}
            if caught_up:
                assert stale == 0, f"{stale} stale reads of 30"
                assert listener.catch_up() is None, "nothing waits: a read awaits nothing"
            else:
                assert stale >= 25, f"only {stale} stale reads of 30 without the catch-up"


async def test_an_asyncio_read_takes_waiting_events_as_bytes(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events waiting in an asyncio subscription's socket are read by the call itself,
    as bytes, without giving the listener task loop turns to parse them one by one."""
    parsed: list[Any] = []
    parse: Any = redis.asyncio.client.PubSub.parse_response

    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = await parse(self, *args, **kwargs)
        if events._message_payload(response) is not None:
            parsed.append(response)
        return response

    monkeypatch.setattr(redis.asyncio.client.PubSub, "parse_response", counting)
    async with AsyncSessionService(redis_url) as b:
        with SessionService(redis_url) as a:
            sid = a.create_session("alice", {"n": 0})
            assert await b.get_session(sid) is not None  # cached in b
            listener = b._store._listener  # type: ignore[attr-defined]
            assert isinstance(listener, events.AsyncEventListener)
            assert listener._watched is not None and listener._sock is not None
            _, fd = listener._watched
            await asyncio.sleep(0.05)
            parsed.clear()
            for n in range(1, 21):  # b's loop is held: the events wait in its socket
                assert a.update_session(sid, {"n": n})
            assert wait_until(lambda: events._unread(fd) > 0 and _settled_unread(fd) > 0)
            assert listener.catch_up() is None  # read there and then: nothing left to await
            assert events._unread(fd) == 0 and parsed == []
            session = await b.get_session(sid)
            assert session is not None and session.attributes == {"n": 20}


async def test_the_asyncio_listener_acts_on_each_message_without_redis_py_s_handling(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener task takes each message's payload as the client parsed it; only what is
    not a message (the confirmation) goes through redis-py's ``handle_message``."""
    handled: list[Any] = []
    acted: list[Any] = []
    event = events.Subscription.event

    def counting_event(self: events.Subscription, data: bytes | str) -> None:
        acted.append(data)
        event(self, data)

    monkeypatch.setattr(events.Subscription, "event", counting_event)
    async with AsyncSessionService(redis_url) as b:
        listener = b._store._listener  # type: ignore[attr-defined]
        assert isinstance(listener, events.AsyncEventListener)
        monkeypatch.setattr(listener, "catch_up", lambda: None)  # only the task reads
        with SessionService(redis_url) as a:
            sid = a.create_session("alice", {"n": 0})
            assert await b.get_session(sid) is not None
            real: Any = redis.asyncio.client.PubSub.handle_message

            async def counting_handle(self: Any, response: Any, *args: Any) -> Any:
                handled.append(response)
                return await real(self, response, *args)

            monkeypatch.setattr(redis.asyncio.client.PubSub, "handle_message", counting_handle)
            acted.clear()
            for n in range(1, 41):
                assert a.update_session(sid, {"n": n})
            for _ in range(200):
                if len(acted) >= 40:
                    break
                await asyncio.sleep(0.01)
            assert len(acted) >= 40, f"the task acted on {len(acted)} of 40 events"
            assert all(r is None for r in handled), f"messages through redis-py: {handled[:3]}"
            session = await b.get_session(sid)
            assert session is not None and session.attributes == {"n": 40}


def test_a_message_payload_is_taken_only_from_a_message() -> None:
    assert events._message_payload([b"message", b"ch", b"x"]) == b"x"
    assert events._message_payload(["message", "ch", "x"]) == "x"
    for other in (None, [b"subscribe", b"ch", 1], b"PONG", [b"pong", b""]):
        assert events._message_payload(other) is None
    assert events._message_payload([b"pmessage", b"p", b"ch", b"x"]) is None
    pushed = hiredis.PushNotification([b"message", b"ch", b"y"])  # how hiredis hands it over
    assert events._message_payload(pushed) == b"y"


def test_an_asyncio_listener_reads_no_tls_bytes_itself() -> None:
    """Over TLS the socket's bytes are the transport's to decrypt: no duplicate to read
    events through is made, and a read gives the listener task its loop turns instead."""

    class Writer:
        def __init__(self, tls: bool) -> None:
            self.sock = socket.socket()
            self.tls = tls

        def get_extra_info(self, name: str) -> Any:
            return {"socket": self.sock, "sslcontext": object() if self.tls else None}[name]

    class Connection:
        def __init__(self, tls: bool) -> None:
            self._writer = Writer(tls)

    class PubSub:
        def __init__(self, tls: bool) -> None:
            self.connection = Connection(tls)

    sub = events.Subscription("ab12", lambda ids, ended: None, "here")
    listener = events.AsyncEventListener(lambda: asyncio.sleep(0), "ps:events", sub)
    plain, tls = PubSub(tls=False), PubSub(tls=True)
    try:
        listener._watch(plain)
        assert listener._sock is not None
        duplicate = listener._sock
        listener._watch(tls)
        assert listener._watched is not None and listener._sock is None
        assert duplicate.fileno() == -1  # the duplicate of the former socket was closed
        listener._watch(None)
        assert listener._watched is None
    finally:
        plain.connection._writer.sock.close()
        tls.connection._writer.sock.close()


def test_a_login_on_a_server_not_told_of_an_end_does_not_revive_the_session(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logs the user out; B, whose listener has not heard it, rotates its cached copy for
    a login: Redis refuses the new id, so the cart of the ended session lives on nowhere."""
    with SessionService(url) as a, SessionService(url) as b:
        sid = a.create_session("alice", {"cart": ["pear"]})
        assert b.get_session(sid) is not None  # cached in b
        monkeypatch.setattr(b, "_catch_up", None)  # b hears nothing: no call reads events,
        monkeypatch.setattr(events.Subscription, "event", lambda self, data: None)  # no listener
        assert a.end_session(sid)
        assert b.rotate_session(sid, username="alice") is None
        assert b.sessions_of("alice") == [] and a.sessions_of("alice") == []
        store = a._store
        assert isinstance(store, RedisStore) and store.count() == 0


def test_a_login_on_a_server_that_hears_of_an_end_while_it_commits_does_not_revive_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B marks a login (a rotation) of its cached copy; before B's commit takes the batch,
    A's logout is heard and drops the old id's end from it: the new id goes alone, and
    Redis refuses it, as the session it succeeds is gone."""
    with SessionService(url) as a, SessionService(url) as b:
        sid = a.create_session("alice", {"cart": ["pear"]})
        assert b.get_session(sid) is not None
        monkeypatch.setattr(b, "_catch_up", None)
        monkeypatch.setattr(events.Subscription, "event", lambda self, data: None)
        answer = b._answer
        staged: list[str] = []

        def answer_after_the_end(request: Any) -> Any:
            if type(request).__name__ == "Commit" and not staged:
                staged.append(sid)
                assert a.end_session(sid)
                b._invalidated([sid], True)  # as the listener does when the event arrives
            return answer(request)

        monkeypatch.setattr(b, "_answer", answer_after_the_end)
        assert b.rotate_session(sid, username="alice") is None
        assert staged == [sid]
        assert b.sessions_of("alice") == [] and a.sessions_of("alice") == []
        store = a._store
        assert isinstance(store, RedisStore) and store.count() == 0


def test_a_read_leaves_this_process_own_events_to_the_listener(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call does not read the events of this process's own commits (the listener does, in
    batches), but one event from elsewhere among them makes it read them all."""
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid = a.create_session("alice", {"n": 0})
        assert b.get_session(sid) is not None
        store = a._store
        assert isinstance(store, RedisStore)
        listener = store._listener
        assert isinstance(listener, events.EventListener) and listener._watched is not None
        fd = listener._watched[1]
        monkeypatch.setattr(events, "_wait_readable", lambda pubsub, timeout: time.sleep(30))
        a.update_session(sid, {"n": 1})  # wakes a's listener once, which then sleeps
        assert wait_until(lambda: events._unread(fd) == 0, timeout=1.0)
        for n in range(2, 5):
            assert a.update_session(sid, {"n": n})
        assert wait_until(lambda: events._unread(fd) > 0, timeout=1.0)
        waiting = _settled_unread(fd)  # the three events may still be on their way
        assert a.get_session(sid).attributes["n"] == 4  # type: ignore[union-attr]
        assert events._unread(fd) == waiting == listener._own  # found to be a's own: left
        assert b.update_session(sid, {"n": 5})
        assert wait_until(lambda: events._unread(fd) > waiting, timeout=1.0)
        assert a.get_session(sid).attributes["n"] == 5  # type: ignore[union-attr]
        assert events._unread(fd) == 0 and listener._own == 0  # read, with a's own


def _settled_unread(fd: int) -> int:
    """The bytes waiting in socket ``fd`` once no more arrive for 20 ms."""
    seen = -1
    while (waiting := events._unread(fd)) != seen:
        seen = waiting
        time.sleep(0.02)
    return seen


def test_listeners_take_events_as_bytes_not_through_redis_py(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events are read as bytes and acted on from their payloads, not parsed one by one by
    redis-py (each cost about 15 µs, and every process hears every other's commits): a
    busy process's own events are only noted, and another's are acted on."""
    through_redis_py: list[Any] = []
    acted: list[tuple[str, bytes | str]] = []
    parse: Any = redis.client.PubSub.parse_response
    event = events.Subscription.event

    def counting_parse(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = parse(self, *args, **kwargs)
        if events._message_payload(response) is not None:
            through_redis_py.append(response)
        return response

    def counting_event(self: events.Subscription, data: bytes | str) -> None:
        acted.append((self.origin, data))
        event(self, data)

    monkeypatch.setattr(redis.client.PubSub, "parse_response", counting_parse)
    monkeypatch.setattr(events.Subscription, "event", counting_event)
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid = a.create_session("alice", {"n": 0})
        assert b.get_session(sid) is not None  # cached in b
        monkeypatch.setattr(events.EventListener, "catch_up", lambda self: None)
        through_redis_py.clear()
        acted.clear()
        for n in range(1, 301):
            assert a.update_session(sid, {"n": n})
        assert wait_until(lambda: b.get_session(sid).attributes["n"] == 300)  # type: ignore[union-attr]
        b.update_session(sid, {"n": "from b"})
        assert wait_until(lambda: a.get_session(sid).attributes["n"] == "from b")  # type: ignore[union-attr]
        store_a, store_b = a._store, b._store
        assert isinstance(store_a, RedisStore) and isinstance(store_b, RedisStore)
        origin_a, origin_b = store_a._origin, store_b._origin
        heard_by_b = [data for by, data in acted if by == origin_b]
        from_a = [data for data in heard_by_b if origin_a.encode() in _bytes(data)]
        assert len(from_a) == 300, f"b acted on {len(from_a)} of a's 300 events"
        assert any(origin_b.encode() in _bytes(data) for by, data in acted if by == origin_a)
        assert len(through_redis_py) < 60, f"{len(through_redis_py)} of 601 events via redis-py"


def test_the_listener_rests_while_calls_catch_up_themselves(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a process's calls read, they apply the events waiting before each read, so its
    listener does not wake for each event (each wake cost the calls GIL hand-overs and
    pre-emptions); what another process changed is still seen."""
    drains: list[str] = []
    drain = events.EventListener._drain

    def counting(self: events.EventListener, pubsub: Any) -> None:
        drains.append(threading.current_thread().name)
        drain(self, pubsub)

    monkeypatch.setattr(events.EventListener, "_drain", counting)
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid, busy = a.create_session("alice", {"n": 0}), b.create_session("bob")
        assert b.get_session(sid) is not None
        with reading(b, busy):
            time.sleep(0.1)
            drains.clear()
            for n in range(1, 301):
                assert a.update_session(sid, {"n": n})

                def seen(n: int = n) -> bool:  # at once, unless Redis is slow to deliver
                    session = b.get_session(sid)
                    return session is not None and session.attributes["n"] == n

                assert wait_until(seen, timeout=1.0)
        woken = drains.count("pooled-sessions-events")
        assert woken < 150, f"the listeners read {woken} times for 300 events each"


@contextlib.contextmanager
def reading(service: SessionService, sid: str) -> Iterator[None]:
    """Calls reading ``sid`` in a loop, on a thread of their own, for the block."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            assert service.validate_session(sid)

    reader = threading.Thread(target=loop)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()


def test_a_subscription_redis_closed_is_noticed_while_calls_keep_reading(
    redis_server: RedisServer, redis_url: str
) -> None:
    """The listener rests while calls catch up, but never for long: a subscription Redis
    closed is found and made again, and the cache is dropped for the events lost."""
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid, other = a.create_session("alice", {"n": 0}), a.create_session("bob")
        assert b.get_session(sid) is not None
        with reading(b, sid):
            for n in range(20):  # events b's calls read: its listener rests
                assert a.update_session(other, {"n": n})
                time.sleep(0.005)
            client = redis.Redis(port=redis_server.port)
            assert client.client_kill_filter(_type="pubsub") >= 2
            time.sleep(0.02)  # a change sent now reaches no subscriber
            assert a.update_session(sid, {"n": 1})
            client.close()
            assert wait_until(lambda: b.get_session(sid).attributes["n"] == 1, timeout=2.0)  # type: ignore[union-attr]


def test_a_full_look_of_own_events_still_finds_another_process_change_behind_them(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read looks at a bounded number of waiting bytes to tell this process's own events
    from others'; when its own fill them exactly, it reads on rather than miss what
    follows."""
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid = a.create_session("alice", {"n": 0})
        assert b.get_session(sid) is not None
        store = a._store
        assert isinstance(store, RedisStore)
        listener = store._listener
        assert isinstance(listener, events.EventListener) and listener._watched is not None
        fd = listener._watched[1]
        monkeypatch.setattr(events, "_wait_readable", lambda pubsub, timeout: time.sleep(30))
        a.update_session(sid, {"n": 1})  # wakes a's listener, which then sleeps
        assert wait_until(lambda: events._unread(fd) == 0, timeout=1.0)
        assert a.update_session(sid, {"n": 2})
        assert wait_until(lambda: events._unread(fd) > 0, timeout=1.0)
        size = _settled_unread(fd)  # one own event
        listener._peeked = bytearray(3 * size)  # a look of exactly three
        for n in range(3, 7):
            assert a.update_session(sid, {"n": n})
        assert b.update_session(sid, {"n": "from b"})  # behind five own events
        assert wait_until(lambda: events._unread(fd) > 5 * size, timeout=1.0)
        seen = a.get_session(sid)
        assert seen is not None and seen.attributes["n"] == "from b"


def _bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode()


def _message(payload: bytes, push: bool = False, kind: bytes = b"message") -> bytes:
    parts = (kind, b"ps:events", payload)
    head = b">3\r\n" if push else b"*3\r\n"
    return head + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


@pytest.mark.parametrize("push", [False, True], ids=["resp2", "resp3"])
def test_own_events_are_told_apart_by_their_bytes(push: bool) -> None:
    own, mine, theirs = b'"o":"ab12"', b'{"o":"ab12","c":["x"]}', b'{"c":["y"],"o":"cd34"}'
    first, second = _message(mine, push), _message(b'{"e":["z"],"o":"ab12"}', push)
    data = bytearray(first + second + _message(theirs, push) + first)
    both = len(first) + len(second)
    assert events._own_events(data, len(data), own, 0) == both  # stops at theirs
    assert events._own_events(data, both, own, len(first)) == both  # goes on from a known end
    assert events._own_events(data, both - 1, own, 0) == len(first)  # the second is cut short
    assert events._own_events(data, 3, own, 0) == 0
    subscribe = bytearray(_message(b"1", push, kind=b"subscribe"))
    assert events._own_events(subscribe, len(subscribe), own, 0) == 0
    forged = bytearray(_message(mine, push).replace(b"$22", b"$2x"))
    assert events._own_events(forged, len(forged), own, 0) == 0


@pytest.mark.parametrize("push", [False, True], ids=["resp2", "resp3"])
def test_whole_messages_and_their_payloads_are_read_from_bytes(push: bool) -> None:
    payloads = [b'{"o":"ab12","c":["x"]}', b'{"o":"cd34","e":["y"]}', b"\r\n$3\r\n*3"]
    frames = [_message(payload, push) for payload in payloads]
    data = bytearray(b"".join(frames) + frames[0])
    whole = sum(map(len, frames))
    assert events._messages(data, len(data)) == (len(data), [*payloads, payloads[0]])
    assert events._messages(data, len(data) - 1) == (whole, payloads)  # the last is cut short
    reply = bytearray(_message(b"1", push, kind=b"subscribe") + frames[1])
    assert events._messages(reply, len(reply)) == (0, [])  # left to redis-py
    for forged in (b"$-30", b"$ 22", b"$2_2"):  # lengths RESP never writes
        odd = bytearray(frames[0].replace(b"$22", forged) + frames[1])
        assert events._messages(odd, len(odd)) == (0, [])
    assert events._messages(bytearray(frames[1] + b"+PONG\r\n"), len(frames[1]) + 7) == (
        len(frames[1]),
        [payloads[1]],
    )


def test_the_next_node_follows_name_order() -> None:
    class Node:
        def __init__(self, name: str) -> None:
            self.name = name

    nodes = [Node("127.0.0.1:7002"), Node("127.0.0.1:7000"), Node("127.0.0.1:7001")]
    assert next_node(nodes, "127.0.0.1:7000").name == "127.0.0.1:7001"
    assert next_node(nodes, "127.0.0.1:7002").name == "127.0.0.1:7000"
    assert next_node(nodes, "gone:1").name == "127.0.0.1:7000"


@pytest.mark.cluster
async def test_events_move_to_another_node_when_theirs_dies(tmp_path: Path) -> None:
    """A cluster of this test alone: the master each listener (asyncio and blocking)
    subscribed through is killed; both go on hearing events through another node."""
    binary("redis-cli")
    cluster = RedisCluster(tmp_path / "cluster").start()
    url = f"{cluster.url}?prefix={unique_prefix()}&socket_connect_timeout=0.5&retries=0"
    aio_store, sync_store = AsyncRedisStore(url), RedisStore(url)
    try:
        heard: dict[str, list[tuple[Any, bool]]] = {"aio": [], "sync": []}
        await aio_store.watch(lambda ids, ended: heard["aio"].append((ids, ended)))
        sync_store.watch(lambda ids, ended: heard["sync"].append((ids, ended)))
        first = {"aio": aio_store._node_name, "sync": sync_store._node_name}
        for node in cluster.nodes:
            if f"127.0.0.1:{node.port}" in first.values():
                node.stop()
        survivor = next(node for node in cluster.nodes if node.process is not None)
        client = redis.Redis(port=survivor.port)
        event = json.dumps({"o": "another-server", "e": ["E" * 43]})
        deadline = time.monotonic() + 15
        while any((["E" * 43], True) not in got for got in heard.values()):
            assert time.monotonic() < deadline, f"no event heard after {first} died: {heard}"
            client.publish(aio_store.keys.channel, event)  # classic pub/sub reaches every node
            await asyncio.sleep(0.1)
        client.close()
        assert aio_store._node_name != first["aio"] and sync_store._node_name != first["sync"]
        assert all((None, False) in got for got in heard.values())  # the gap was reported
    finally:
        await aio_store.close()
        sync_store.close()
        cluster.stop()


def test_the_listener_notes_events_of_its_own_and_acts_on_the_others() -> None:
    """Its own events are dropped unparsed and noted (the listener then rests, `REST_SECONDS`);
    another store's are acted on, as bytes or as text."""
    heard: list[tuple[Any, bool]] = []
    sub = events.Subscription("ab12", lambda ids, ended: heard.append((ids, ended)), "here")
    assert sub.handle({"type": "subscribe", "data": 1})
    assert sub.took([b"message", b"ch", b'{"c":["x"],"o":"ab12"}'])
    assert heard == [] and sub.heard_own
    sub.heard_own = False
    assert sub.took([b"message", b"ch", b'{"o":"cd34","e":["y"],"c":["z"]}'])
    assert sub.took(["message", "ch", '{"o":"cd34","c":["w"]}'])
    assert not sub.took([b"subscribe", b"ch", 1]) and not sub.took(None)
    assert heard == [(["y"], True), (["z"], False), (["w"], False)] and not sub.heard_own
