"""A commit's commands are packed by hiredis directly: the same bytes redis-py would send."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio
from redis.connection import Connection, HiredisRespSerializer, PythonRespSerializer

from pooled_sessions import SessionService
from pooled_sessions.adapters.redis.base import packed

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "05693645cd31c26579b8", 2, "a:s:{x}", "a:t:{x}", 1796179294974, "U", "x"),
    ("ZADD", "a:x:{0}", "GT", 1796181094.9733813, "x:alice"),
    ("HSET", "k", ".name", '"Zoë 🍐"', ".raw", b"\x00\xff"),
]


def connection(**kwargs: Any) -> Any:
    """A redis-py connection, not connected (packing needs no server)."""
    return Connection(**kwargs)  # type: ignore[no-untyped-call]


def aconnection(**kwargs: Any) -> Any:
    """A redis.asyncio connection, not connected."""
    return redis.asyncio.Connection(**kwargs)


def test_a_hiredis_connection_gets_the_bytes_redis_py_would_send() -> None:
    conn = connection()
    assert type(conn._command_packer) is HiredisRespSerializer
    expected = [b"".join(conn.pack_commands(COMMANDS))]
    conn.pack_commands = None  # not asked: hiredis packs
    assert packed(conn, COMMANDS) == expected


def test_a_connection_that_packs_in_python_packs_for_itself() -> None:
    conn = connection(command_packer=PythonRespSerializer(6000, lambda value: value))
    calls: list[Any] = []

    def own(commands: Any) -> list[bytes]:
        calls.append(commands)
        return [b"own"]

    conn.pack_commands = own
    assert packed(conn, COMMANDS) == [b"own"] and calls == [COMMANDS]
    latin = aconnection(encoding="latin-1")  # its bytes would not be hiredis'
    latin.pack_commands = own
    assert packed(latin, COMMANDS) == [b"own"] and calls == [COMMANDS, COMMANDS]


def test_an_asyncio_connection_gets_the_bytes_redis_py_would_send() -> None:
    """redis.asyncio packs in Python, with its encoder: UTF-8 and strict by default, which
    gives hiredis' bytes, so hiredis packs for it."""
    aconn = aconnection()
    expected = [b"".join(aconn.pack_commands(COMMANDS))]
    aconn.pack_commands = None  # not asked: hiredis packs
    assert packed(aconn, COMMANDS) == expected


def test_an_argument_hiredis_refuses_gets_redis_py_s_error() -> None:
    with pytest.raises(redis.exceptions.DataError):
        packed(connection(), [("SET", "k", None)])


def test_text_and_numbers_are_stored_and_read_back(redis_url: str) -> None:
    value = {"name": "Zoë 🍐", "cart": [1, 2.5, None], "quote": 'say "hi"\r\n'}
    with SessionService(redis_url) as a, SessionService(redis_url) as b:
        sid = a.create_session("zoë", value)
        assert a.update_session(sid, {"more": "\u00a0"})
        read = b.get_session(sid)
        assert read is not None and read.attributes == {**value, "more": "\u00a0"}
