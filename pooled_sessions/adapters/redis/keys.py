"""The Redis key schema and hash layout, shared by the sync and asyncio Redis stores.

Every key one script needs carries the same hash tag, so Redis Cluster keeps them in one
slot: a session's hash and its tombstone are tagged with the session id. The per-user
index is tagged with the user name, and the expiry index is split into shards tagged
with their number, so no key is hot on a cluster.

    {prefix}:s:{<id>}        hash: one field per attribute (".name" -> JSON) and metadata
                             ("@user", "@expires", ...); its TTL is the session's expiry
    {prefix}:t:{<id>}        tombstone (the end time) with a TTL: a late write never revives
    {prefix}:u:{<user>}      sorted set: the user's session ids, scored by creation time
    {prefix}:x:{<n>}         sorted set, shard n: "<id>:<user>" scored by expiry (a lower bound)
    {prefix}:l:{<user>}      string with a TTL: a server's token while it logs the user in
    {prefix}:slots           sorted set (with a pool): ids holding a slot, scored by expiry
    {prefix}:events          pub/sub channel: ids ended or changed, so caches drop them
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pooled_sessions.codec import Record, Upsert, check_record, encode_stored, short_id
from pooled_sessions.errors import ConfigError, CorruptStoreError

LAYOUT_VERSION = "1"
VERSION, USER, IP, AGENT = "@v", "@user", "@ip", "@ua"
CREATED, ACCESSED, EXPIRES, ABSOLUTE = "@created", "@accessed", "@expires", "@absolute"
ATTRIBUTE = "."  # prefix of attribute fields, so a name never meets a metadata field
_RAW = {text: text.encode() for text in (VERSION, LAYOUT_VERSION, USER, IP, AGENT)}
_RAW.update({text: text.encode() for text in (CREATED, ACCESSED, EXPIRES, ABSOLUTE)})


def _escape_tag(text: str) -> str:
    """Make ``text`` safe inside ``{...}``: braces would cut the hash tag short."""
    if "%" not in text and "{" not in text and "}" not in text:
        return text  # the usual name: three scans instead of three copies
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Names of every key and channel under one prefix."""

    prefix: str
    shards: int = 1
    pooled: bool = False  # keep the pool's slot set, for a max_total across servers

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{} \r\n"):
            raise ConfigError(
                f"redis key prefix must be non-empty, without braces or spaces: {self.prefix!r}"
            )
        if not 1 <= self.shards <= 1024:
            raise ConfigError(f"index_shards must be between 1 and 1024, got {self.shards}")

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:s:{{{session_id}}}"

    def tombstone(self, session_id: str) -> str:
        return f"{self.prefix}:t:{{{session_id}}}"

    def user(self, username: str) -> str:
        return f"{self.prefix}:u:{{{_escape_tag(username)}}}"

    def user_lock(self, username: str) -> str:
        return f"{self.prefix}:l:{{{_escape_tag(username)}}}"

    def shard_of(self, session_id: str) -> str:
        return self.shard(zlib.crc32(session_id.encode()) % self.shards)

    def shard(self, number: int) -> str:
        return f"{self.prefix}:x:{{{number}}}"

    def all_shards(self) -> list[str]:
        return [self.shard(n) for n in range(self.shards)]

    @property
    def slots(self) -> str:
        return f"{self.prefix}:slots"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:events"


def member(session_id: str, username: str) -> str:
    """An expiry-index member: the id (URL-safe, so no colon) then the user name."""
    return f"{session_id}:{username}"


def split_member(text: str | bytes) -> tuple[str, str]:
    """``(session_id, username)`` of an expiry-index member."""
    value = text.decode() if isinstance(text, bytes) else text
    sid, _, username = value.partition(":")
    return sid, username


def ms(seconds: float) -> int:
    """Unix milliseconds, rounded up so an expiry is never cut short."""
    return math.ceil(seconds * 1000.0)


def upsert_fields(op: Upsert, full: bool) -> dict[str, str]:
    """The hash fields an upsert writes: everything when ``full``, else what changed."""
    fields: dict[str, str] = {}
    if full:
        fields.update(
            {
                VERSION: LAYOUT_VERSION,
                USER: op.username,
                CREATED: repr(op.created_at),
                ABSOLUTE: "" if op.absolute_expires_at is None else repr(op.absolute_expires_at),
            }
        )
    attributes = op.attributes
    for name in attributes if full else op.changed:
        fields[ATTRIBUTE + name] = attributes[name]
    if op.ip is not None:
        fields[IP] = op.ip
    if op.user_agent is not None:
        fields[AGENT] = op.user_agent
    return fields


def record_hash(record: Record) -> dict[bytes, bytes]:
    """The hash a full write of ``record`` leaves, as Redis returns it: what a faithful
    copy of it holds, field for field, in one order for equal records (attributes by name).

    Text Redis cannot hold (a lone surrogate) gives bytes no hash holds.
    """
    absolute, ip, agent = record["absolute_expires_at"], record["ip"], record["user_agent"]
    fields = {
        _RAW[VERSION]: _RAW[LAYOUT_VERSION],
        _RAW[USER]: _utf8(record["username"]),
        _RAW[CREATED]: repr(record["created_at"]).encode(),
        _RAW[ABSOLUTE]: b"" if absolute is None else repr(absolute).encode(),
        _RAW[ACCESSED]: repr(record["last_accessed_at"]).encode(),
        _RAW[EXPIRES]: repr(record["expires_at"]).encode(),
    }
    attributes = encode_stored(record["attributes"])
    for name in sorted(attributes):
        fields[_utf8(ATTRIBUTE + name)] = _utf8(attributes[name])
    if ip is not None:
        fields[_RAW[IP]] = _utf8(ip)
    if agent is not None:
        fields[_RAW[AGENT]] = _utf8(agent)
    return fields


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def removed_fields(op: Upsert) -> list[str]:
    """Hash fields of the attributes an upsert removes."""
    return [ATTRIBUTE + name for name in op.removed if name not in op.attributes]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(session_id: str, raw: Mapping[Any, Any], where: str) -> Record | None:
    """The record a session hash holds (None if the hash is gone), or CorruptStoreError."""
    if not raw:
        return None
    try:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        if fields.get(VERSION) != LAYOUT_VERSION:
            raise CorruptStoreError(
                f"{where}: session {short_id(session_id)} has layout version "
                f"{fields.get(VERSION)!r}, this library reads {LAYOUT_VERSION}"
            )
        absolute = fields.get(ABSOLUTE, "")
        record = {
            "username": fields[USER],
            "attributes": {
                k[1:]: json.loads(v) for k, v in fields.items() if k.startswith(ATTRIBUTE)
            },
            "ip": fields.get(IP),
            "user_agent": fields.get(AGENT),
            "created_at": float(fields[CREATED]),
            "last_accessed_at": float(fields[ACCESSED]),
            "expires_at": float(fields[EXPIRES]),
            "absolute_expires_at": float(absolute) if absolute else None,
        }
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(
            f"{where}: session {short_id(session_id)} is not a session hash ({exc!r})"
        ) from None
    return check_record(session_id, record, where)


def texts(values: Iterable[str | bytes]) -> list[str]:
    """Replies as str, whatever the client's ``decode_responses``."""
    return [_text(v) for v in values]
