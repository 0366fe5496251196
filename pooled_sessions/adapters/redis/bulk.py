"""The bulk path of a Redis write: many new sessions written in full by one script call.

A large batch of full creates (a migration, a burst of logins) would cost one APPLY entry
of about twenty arguments, and on one server one user-index command, per session.
`BULK_CREATE` takes fewer arguments per session, checks hash and tombstone with one
EXISTS, and on one server writes the user and expiry indexes itself, so a chunk of
creates is one command. On a cluster the creates are grouped by hash slot (one call per
slot, since a script only touches keys of one slot) and the indexes go as they always do.
"""

from __future__ import annotations

import binascii
import json
import zlib
from collections.abc import Sequence
from typing import Any, TypeGuard

from pooled_sessions.adapters.redis.keys import AGENT, ATTRIBUTE, IP, LAYOUT_VERSION, KeySchema, ms
from pooled_sessions.adapters.redis.scripts import BULK_CREATE
from pooled_sessions.codec import Operation, Upsert

Command = tuple[Any, ...]
BULK_MIN = 32
"""Full creates in one batch from which the bulk path is taken."""
CALLS_PER_PIPELINE = 4
"""Bulk calls (of up to ``chunk_size`` sessions each) sent in one pipeline."""
CLUSTER_SLOTS = 16384
encode = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode
"""Compact JSON for script arguments (cjson decodes it in C inside Redis)."""


def split(ops: Sequence[Operation]) -> tuple[list[Upsert], list[Operation]] | None:
    """The full creates of a batch to write in bulk, and the other operations.

    None when the batch holds fewer than `BULK_MIN` creates, or names one session twice
    (writing the creates apart would then change the order of that session's writes). A
    rotation's new id stays with the other operations, which move its pool slot and end
    the id it succeeds.
    """
    creates = [op for op in ops if _bulky(op)]
    if len(creates) < BULK_MIN or len({op.session_id for op in ops}) != len(ops):
        return None
    if len(creates) == len(ops):
        return creates, []
    return creates, [op for op in ops if not _bulky(op)]


def _bulky(op: Operation) -> TypeGuard[Upsert]:
    return isinstance(op, Upsert) and op.created and not op.rotated_from and not op.succeeds


def calls(
    keys: KeySchema, creates: Sequence[Upsert], now_ms: int, *, size: int, cluster: bool
) -> list[tuple[Command, list[Upsert]]]:
    """`BULK_CREATE` calls for ``creates``, each with the sessions it writes, in order.

    On one server, calls of up to ``size`` sessions that also write the indexes; on a
    cluster one call per hash slot (the caller writes the indexes there).
    """
    if not cluster:
        groups = [list(creates[start : start + size]) for start in range(0, len(creates), size)]
        return [(_call(keys, group, now_ms, indexed=True), group) for group in groups]
    slots: dict[int, list[Upsert]] = {}
    for op in creates:
        slot = binascii.crc_hqx(op.session_id.encode(), 0) % CLUSTER_SLOTS  # the id is the tag
        slots.setdefault(slot, []).append(op)
    return [(_call(keys, group, now_ms, indexed=False), group) for group in slots.values()]


def _call(keys: KeySchema, creates: Sequence[Upsert], now_ms: int, indexed: bool) -> Command:
    """One `BULK_CREATE` call; the loop is the whole client-side cost of a bulk write."""
    pooled = indexed and keys.pooled
    shards = keys.all_shards() if indexed else []
    hashes: list[str] = []
    tombstones: list[str] = []
    users: list[str] = []
    data: list[Any] = []
    count, user_key = keys.shards, keys.user
    hash_head, tomb_head = keys.session("")[:-1], keys.tombstone("")[:-1]  # "{prefix}:s:{"
    shard = 1 if indexed else 0
    for op in creates:
        sid, user, absolute = op.session_id, op.username, op.absolute_expires_at
        hashes.append(hash_head + sid + "}")
        tombstones.append(tomb_head + sid + "}")
        if indexed:
            users.append(user_key(user))
            if count > 1:
                shard = zlib.crc32(sid.encode()) % count + 1
        attributes, ip, agent = op.attributes, op.ip, op.user_agent
        data += (
            sid,
            shard,
            ms(op.expires_at),
            user,
            repr(op.created_at),
            "" if absolute is None else repr(absolute),
            repr(op.last_accessed_at),
            repr(op.expires_at),
            1 if op.create else 0,
            len(attributes) + (ip is not None) + (agent is not None),
        )
        for name, value in attributes.items():
            data += (ATTRIBUTE + name, value)
        if ip is not None:
            data += (IP, ip)
        if agent is not None:
            data += (AGENT, agent)
    key_list = [*shards, *([keys.slots] if pooled else []), *hashes, *tombstones, *users]
    return (
        "EVALSHA",
        BULK_CREATE.sha,
        len(key_list),
        *key_list,
        now_ms,
        "1" if indexed else "0",
        len(shards),
        "1" if pooled else "0",
        LAYOUT_VERSION,
        encode(data),
    )
