"""What the Redis stores send and how they read the replies, with no I/O.

Each operation is a generator that yields a list of commands (one pipeline), receives
the replies (an exception in place of each failed command) and returns its result. The
sync and asyncio stores only run pipelines for it, so the logic exists once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from pooled_sessions.adapters.redis import bulk as bulk
from pooled_sessions.adapters.redis.keys import (
    KeySchema,
    decode_hash,
    member,
    ms,
    removed_fields,
    split_member,
    texts,
    upsert_fields,
)
from pooled_sessions.adapters.redis.scripts import (
    APPLY,
    BULK_CREATE,
    CLAIM_SLOT,
    LOAD_HASHES,
    SYNC_SLOTS,
    UNLOCK,
    Script,
)
from pooled_sessions.codec import Delete, Operation, Record, Upsert, WriteResult

T = TypeVar("T")
Command = tuple[Any, ...]
Step = Generator[list[Command], list[Any], T]
PAGE = 500
NO_FOLLOWS: Mapping[str, str] = MappingProxyType({})
OWN_ENDS_KEPT = 4096
"""Ends a store remembers for logins whose batch was cut short (see `write`)."""
ALL_WRITTEN = WriteResult()
WRITTEN, REFUSED, GONE, LAPSED = 1, 0, 2, 3
Status = int | str
"""Of one write in a script's reply: `WRITTEN`, `REFUSED` (ended), `GONE` (a partial write of
a session Redis lacks), `LAPSED` (an end written for a session Redis no longer held: ended
elsewhere, expired or evicted), or the user whose session holds the id a create wanted."""
_SCRIPTS = {
    script.sha: script
    for script in (APPLY, BULK_CREATE, CLAIM_SLOT, LOAD_HASHES, SYNC_SLOTS, UNLOCK)
}
logger = logging.getLogger("session_service")


def evalsha(script: Script, keys: Sequence[str], args: Iterable[Any]) -> Command:
    """A script call; `run` falls back to EVAL when the server lacks the script."""
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def run(commands: list[Command]) -> Step[list[Any]]:
    """Send one pipeline; scripts the server forgot (a restart) are sent again in full."""
    replies = yield commands
    if not any(isinstance(reply, Exception) for reply in replies):
        return replies
    lost = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
    if lost:
        again = yield [("EVAL", _SCRIPTS[commands[i][1]].source, *commands[i][2:]) for i in lost]
        for i, reply in zip(lost, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _is_noscript(reply: Any) -> bool:
    # redis-py turns the NOSCRIPT reply into NoScriptError and drops the code from the text
    return isinstance(reply, Exception) and (
        type(reply).__name__ == "NoScriptError" or str(reply).startswith("NOSCRIPT")
    )


# -- writes ---------------------------------------------------------------------------


class Batch:
    """Turns write operations into script calls and index updates."""

    def __init__(self, keys: KeySchema, now: float, origin: str, tombstone_ttl_ms: int) -> None:
        self.keys = keys
        self.head = (ms(now), tombstone_ttl_ms, keys.channel, origin)

    def apply(
        self,
        group: Sequence[Operation],
        indexes: Sequence[Command] = (),
        same_only: Collection[str] = (),
        follows: Mapping[str, str] = NO_FOLLOWS,
    ) -> Command:
        """One APPLY call for operations whose keys share a slot (or any, on one server),
        running ``indexes`` (plain index commands; one server only) in the same call. The
        creates in ``same_only`` (rotations of sessions Redis no longer held) are written
        only over the same creation: a retried batch whose first attempt got through. A
        create in ``follows`` (new id -> old id, the old one's end earlier in ``group``)
        is a rotation the script writes as such a create if that end found no session."""
        keys: list[str] = []
        args: list[Any] = [*self.head, len(group)]
        for op in group:
            keys += (self.keys.session(op.session_id), self.keys.tombstone(op.session_id))
            if isinstance(op, Delete):
                args += ("D", op.session_id, repr(op.ended_at))
                continue
            fields = upsert_fields(op, op.created)
            dels = removed_fields(op) if op.removed and not op.created else []
            notify = not op.created and bool(op.changed or op.removed)
            old = follows.get(op.session_id)
            args += (
                "U",
                op.session_id,
                "S" if op.session_id in same_only else mode_of(op) if old is None else "R" + old,
                ms(op.expires_at),
                repr(op.expires_at),
                repr(op.last_accessed_at),
                "1" if notify else "0",
                len(fields),
                len(dels),
            )
            for pair in fields.items():
                args += pair
            args += dels
        if indexes:
            keys += (command[1] for command in indexes)
            args.append(len(indexes))
            for name, _, *rest in indexes:
                args += (name, len(rest), *rest)
        return evalsha(APPLY, keys, args)

    def slots(self, ops: Sequence[Operation], kept: Collection[str] = ()) -> list[Command]:
        """Pool slot updates, one `SYNC_SLOTS` call: scores follow expiry, a rotation moves
        its slot to the new id, an end frees its slot (unless ``kept``: a rotation written
        later moves it); a write never adds one."""
        moves: list[Any] = []
        scored: list[Any] = []
        ended: list[str] = []
        for op in ops:
            if isinstance(op, Delete):
                if op.session_id not in kept:
                    ended.append(op.session_id)
            elif op.rotated_from:
                moves.append((op.session_id, repr(op.expires_at), len(op.rotated_from)))
                moves[-1] += op.rotated_from
            else:
                scored += (repr(op.expires_at), op.session_id)
        if not (moves or scored or ended):
            return []
        args = [len(moves), *(x for move in moves for x in move), len(scored) // 2, *scored]
        return [evalsha(SYNC_SLOTS, [self.keys.slots], [*args, *ended])]

    def indexes(self, ops: Sequence[Operation]) -> list[Command]:
        """Index updates: the pool slots' script call, then the plain commands (`index_parts`)."""
        slots, plain = self.index_parts(ops)
        return slots + plain

    def index_parts(
        self, ops: Sequence[Operation], kept: Collection[str] = ()
    ) -> tuple[list[Command], list[Command]]:
        """Index updates as script calls (pool slots) and plain commands: expiry scores
        only grow; users gain created ids, lose ended ones; ended ids free their pool
        slots, except the ``kept`` ones (see `slots`)."""
        keys = self.keys
        shard_add: dict[str, list[Any]] = {}
        shard_rem: dict[str, list[str]] = {}
        user_add: dict[str, list[Any]] = {}
        user_rem: dict[str, list[str]] = {}
        ended: list[str] = []
        for op in ops:
            shard, item = keys.shard_of(op.session_id), member(op.session_id, op.username)
            if isinstance(op, Delete):
                shard_rem.setdefault(shard, []).append(item)
                if op.username:  # anonymous sessions are in no user's index
                    user_rem.setdefault(keys.user(op.username), []).append(op.session_id)
                if op.session_id not in kept:
                    ended.append(op.session_id)
                continue
            shard_add.setdefault(shard, []).extend((op.expires_at, item))
            if op.created and op.username:
                user_add.setdefault(keys.user(op.username), []).extend(
                    (op.created_at, op.session_id)
                )
        if keys.pooled:
            slots = self.slots(ops, kept)
        else:  # an end frees the slot, whether this server counts slots or not
            slots = [("ZREM", keys.slots, *ended)] if ended else []
        plain: list[Command] = [("ZADD", key, "GT", *items) for key, items in shard_add.items()]
        if user_add or shard_rem or user_rem:
            plain += [("ZADD", key, "NX", *items) for key, items in user_add.items()]
            plain += [("ZREM", key, *items) for key, items in shard_rem.items()]
            plain += [("ZREM", key, *items) for key, items in user_rem.items()]
        return slots, plain


def write(
    keys: KeySchema,
    ops: Sequence[Operation],
    now: float,
    origin: str,
    tombstone_ttl_ms: int,
    chunk_size: int,
    cluster: bool,
    own_ends: dict[str, float] | None = None,
) -> Step[WriteResult]:
    """Apply a batch: one pipeline per chunk, plus a second only to undo the index entries
    of writes the scripts refused.

    Many new sessions in one batch (a migration, a burst of logins) go through the bulk
    path (`redis_bulk`): script calls of up to ``chunk_size`` sessions, several per
    pipeline, after the other operations, so the ends whose pool slots those sessions
    took are written before them. The creates of rotations come after the ends of the ids
    they succeed, each written only if its end found that session in Redis (see
    `Upsert.succeeds`): on one server, in the same script call when the batch fits one
    (the script tells each rotation what its end found); else in one more pipeline.

    ``own_ends`` (the store's, kept between calls) holds the ends of such sessions this
    store wrote in an attempt cut short before their rotations: sent again, the end finds
    its session gone by its own hand, not elsewhere, and the login goes on.

    A rotation sent without the end of the id it succeeds (the service dropped that end on
    hearing another server's end of the same session) is written only over the same
    creation (a retry): it never creates the new id, which would revive the ended session.
    """
    batch = Batch(keys, now, origin, tombstone_ttl_ms)
    refused: set[str] = set()
    taken: set[str] = set()
    lapsed: set[str] = set()
    own = {} if own_ends is None else own_ends
    rotations = [op for op in ops if isinstance(op, Upsert) and op.succeeds is not None]
    succeeded: set[str] = set()
    moving: set[str] = set()  # the slots of the ids rotations replace move later
    orphans: set[str] = set()  # rotations whose old id's end is not in the batch
    if rotations:
        succeeded = {op.succeeds for op in rotations if op.succeeds is not None}
        moving = {old for op in rotations for old in op.rotated_from}
        ops = [op for op in ops if not (isinstance(op, Upsert) and op.succeeds is not None)]
        ending = {op.session_id for op in ops if isinstance(op, Delete)} | set(own)
        orphans = {op.session_id for op in rotations if op.succeeds not in ending}
    parts = bulk.split(ops)
    creates, ops = ([], ops) if parts is None else parts
    follows: dict[str, str] = {}
    if rotations and not cluster and len(ops) + len(rotations) <= chunk_size:  # one call
        follows = _decided_in_script(ops, rotations, own)
        ops, rotations = [*ops, *rotations], []
    for group in (ops, rotations):
        same_only = orphans | {op.session_id for op in rotations if op.succeeds in lapsed}
        for start in range(0, len(group), chunk_size):
            chunk = group[start : start + chunk_size]
            statuses = yield from _apply(batch, chunk, cluster, same_only, moving, follows)
            lost_ops, owned_ops = _refusals(chunk, statuses)
            if lost_ops or owned_ops:
                undo = batch.indexes([Delete(o.session_id, o.username, now) for o in lost_ops])
                yield from run(undo + _disown(keys, owned_ops))
                refused.update(op.session_id for op in lost_ops)
                taken.update(op.session_id for op, _ in owned_ops)
            if succeeded:
                for op, status in zip(chunk, statuses, strict=True):
                    if isinstance(op, Delete) and op.session_id in succeeded:
                        _note_end(op, status, own, lapsed)
    for old in succeeded:
        own.pop(old, None)
    step = chunk_size * bulk.CALLS_PER_PIPELINE
    for start in range(0, len(creates), step):
        group = creates[start : start + step]
        lost, owned = yield from _bulk(batch, group, chunk_size, cluster)
        refused.update(lost)
        taken.update(owned)
    if not (refused or taken):
        return ALL_WRITTEN
    return WriteResult(refused=frozenset(refused), taken=frozenset(taken))


def _decided_in_script(
    ops: Sequence[Operation], rotations: Sequence[Upsert], own: Mapping[str, float]
) -> dict[str, str]:
    """For rotations sent in the call that ends the ids they succeed: each new id and the
    old id whose end the script consults. One whose end this store already wrote, in an
    attempt cut short, is a plain create."""
    ends = {op.session_id: op.ended_at for op in ops if isinstance(op, Delete)}
    return {
        op.session_id: op.succeeds
        for op in rotations
        if op.succeeds in ends and own.get(op.succeeds, -1.0) != ends[op.succeeds]
    }


def _note_end(op: Delete, status: Status, own: dict[str, float], lapsed: set[str]) -> None:
    """Remember an end a rotation follows: written (until the rotation is), or lapsed
    unless this store wrote this same end before (an attempt cut short)."""
    sid = op.session_id
    if status == WRITTEN:
        own[sid] = op.ended_at
        while len(own) > OWN_ENDS_KEPT:
            del own[next(iter(own))]
    elif status == LAPSED and own.get(sid) != op.ended_at:
        lapsed.add(sid)


def mode_of(op: Upsert) -> str:
    """APPLY's mode for an upsert: "C" a create, "F" a full write, "P" a partial one."""
    return "C" if op.create else "F" if op.created else "P"


def _refusals(
    ops: Sequence[Operation], statuses: Sequence[Status]
) -> tuple[list[Operation], list[tuple[Upsert, str]]]:
    """The writes refused (ended or gone), and the creates refused with the user whose
    session holds their id."""
    lost: list[Operation] = []
    owned: list[tuple[Upsert, str]] = []
    for op, status in zip(ops, statuses, strict=True):
        if isinstance(status, str):
            assert isinstance(op, Upsert)
            owned.append((op, status))
        elif status not in (WRITTEN, LAPSED):
            lost.append(op)
    return lost, owned


def _disown(keys: KeySchema, owned: Sequence[tuple[Upsert, str]]) -> list[Command]:
    """Undo the index entries of refused creates whose id another user's session holds
    (the same user's entries are that session's too; the id's pool slot is its)."""
    commands: list[Command] = []
    for op, owner in owned:
        if owner != op.username:
            sid = op.session_id
            commands.append(("ZREM", keys.shard_of(sid), member(sid, op.username)))
            if op.username:
                commands.append(("ZREM", keys.user(op.username), sid))
    return commands


def _statuses(reply: Sequence[Any]) -> list[Status]:
    """A script's statuses: numbers, and users as str whatever the client decodes."""
    return [s if isinstance(s, int) else texts([s])[0] for s in reply]


def _bulk(
    batch: Batch, creates: Sequence[Upsert], size: int, cluster: bool
) -> Step[tuple[list[str], list[str]]]:
    """Write new sessions in full through `BULK_CREATE`, in one pipeline of calls of up to
    ``size`` sessions; returns the ids refused (ended) and taken (another session's).

    On a cluster the index updates go in the same pipeline and are undone for refused ids.
    """
    now_ms = batch.head[0]
    calls = bulk.calls(batch.keys, creates, now_ms, size=size, cluster=cluster)
    alive = [op for op in creates if ms(op.expires_at) > now_ms]  # what the script writes
    indexes = batch.indexes(alive) if cluster else []
    replies = yield from run([command for command, _ in calls] + indexes)
    lost: list[Operation] = []
    owned: list[tuple[Upsert, str]] = []
    for (_, group), reply in zip(calls, replies, strict=False):
        gone, held = _refusals(group, _statuses(reply))
        lost += gone
        owned += held
    if cluster and (lost or owned):
        undo = batch.indexes([Delete(op.session_id, op.username, 0.0) for op in lost])
        yield from run(undo + _disown(batch.keys, owned))
    return [op.session_id for op in lost], [op.session_id for op, _ in owned]


def _apply(
    batch: Batch,
    ops: Sequence[Operation],
    cluster: bool,
    same_only: Collection[str] = (),
    kept: Collection[str] = (),
    follows: Mapping[str, str] = NO_FOLLOWS,
) -> Step[list[Status]]:
    """Statuses of ``ops`` after one pipeline of APPLY calls and index updates: on one
    server a single APPLY runs the index commands too (pool slots stay a script call of
    their own); on a cluster, whose indexes live in other slots, they follow it. Creates
    in ``same_only`` are written only over the same creation, those in ``follows`` as
    their ends found (see `Batch.apply`); ends in ``kept`` keep their pool slots, for
    rotations written after them to move."""
    slots, plain = batch.index_parts(ops, kept)
    if not cluster:
        replies = yield from run([batch.apply(ops, plain, same_only, follows), *slots])
        return _statuses(replies[0])
    calls = [batch.apply([op], same_only=same_only) for op in ops]
    replies = yield from run(calls + slots + plain)
    return [status for reply in replies[: len(calls)] for status in _statuses(reply)]


# -- reads ----------------------------------------------------------------------------


def load(keys: KeySchema, session_id: str, where: str) -> Step[Record | None]:
    """One session's record, from its hash."""
    (raw,) = yield from run([("HGETALL", keys.session(session_id))])
    return decode_hash(session_id, raw, where)


def ended(keys: KeySchema, session_id: str) -> Step[bool]:
    """True if the session was ended (its tombstone is still kept)."""
    (found,) = yield from run([("EXISTS", keys.tombstone(session_id))])
    return bool(found)


def load_many(keys: KeySchema, ids: Sequence[str], where: str) -> Step[dict[str, Record | None]]:
    """Records of several sessions (None for each one gone), in one pipeline."""
    if not ids:
        return {}
    replies = yield from run([("HGETALL", keys.session(sid)) for sid in ids])
    return {sid: decode_hash(sid, raw, where) for sid, raw in zip(ids, replies, strict=True)}


def load_hashes(keys: KeySchema, ids: Sequence[str], cluster: bool) -> Step[list[dict[Any, Any]]]:
    """Several sessions' hashes as stored, undecoded (empty for each one gone), in one round
    trip: one script call on one server, a pipeline of HGETALL on a cluster."""
    if not ids:
        return []
    if cluster:
        replies = yield from run([("HGETALL", keys.session(sid)) for sid in ids])
        return [dict(raw) for raw in replies]
    (flat,) = yield from run([evalsha(LOAD_HASHES, [keys.session(sid) for sid in ids], ())])
    return [dict(zip(raw[::2], raw[1::2], strict=True)) for raw in flat]


def load_user(keys: KeySchema, username: str, where: str) -> Step[Mapping[str, Record]]:
    """A user's records; ids whose session is gone are pruned from the indexes."""
    user_key = keys.user(username)
    (ids,) = yield from run([("ZRANGE", user_key, 0, -1)])
    found = yield from load_many(keys, texts(ids), where)
    dead = [sid for sid, record in found.items() if record is None]
    if dead:
        yield from run(_forget(keys, [(sid, username) for sid in dead]))
    return {sid: record for sid, record in found.items() if record is not None}


def _forget(keys: KeySchema, pairs: Sequence[tuple[str, str]]) -> list[Command]:
    """Index removals for sessions that are gone: ``(session_id, username)`` pairs."""
    ops = [Delete(sid, user, 0.0) for sid, user in pairs]
    return Batch(keys, 0.0, "", 0).indexes(ops)


def count(keys: KeySchema, now: float) -> Step[int]:
    """Live sessions, from the expiry index."""
    replies = yield from run([("ZCOUNT", key, f"({now!r}", "+inf") for key in keys.all_shards()])
    return sum(int(n) for n in replies)


def purge(keys: KeySchema, now: float) -> Step[int]:
    """Drop index entries of sessions Redis expired; re-score entries still alive."""
    removed = 0
    for shard in keys.all_shards():
        while True:
            (items,) = yield from run([("ZRANGEBYSCORE", shard, "-inf", now, "LIMIT", 0, PAGE)])
            pairs = [split_member(item) for item in items]
            if not pairs:
                break
            ttl = yield from run([("PEXPIRETIME", keys.session(sid)) for sid, _ in pairs])
            dead = [pair for pair, t in zip(pairs, ttl, strict=True) if int(t) == -2]
            alive: list[Any] = []
            for (sid, user), t in zip(pairs, ttl, strict=True):
                if int(t) != -2:  # no TTL (-1) should not happen: look again in a day
                    score = int(t) / 1000.0 if int(t) > 0 else now + 86_400.0
                    alive += (max(score, now + 0.001), member(sid, user))
            commands = _forget(keys, dead) + ([("ZADD", shard, *alive)] if alive else [])
            yield from run(commands)
            removed += len(dead)
    return removed


def scan_page(
    keys: KeySchema, shard: str, cursor: int, where: str
) -> Step[tuple[int, list[tuple[str, Record]]]]:
    """One page of a shard's sessions, and the cursor of the next (0 when done)."""
    ((cursor, items),) = yield from run([("ZSCAN", shard, cursor, "COUNT", PAGE)])
    ids = sorted({split_member(item[0])[0] for item in items})
    found = yield from load_many(keys, ids, where)
    return int(cursor), [(sid, rec) for sid, rec in found.items() if rec is not None]


# -- pool slots -----------------------------------------------------------------------


def claim_slot(
    keys: KeySchema,
    session_id: str,
    expires_at: float,
    now: float,
    limit: int,
    replaces: Sequence[str] = (),
) -> Step[bool]:
    """Take one of ``limit`` live-session slots shared by every server, atomically, or the
    slot one of ``replaces`` (sessions this server ended) still holds."""
    args = [session_id, repr(expires_at), repr(now), limit, *replaces]
    (granted,) = yield from run([evalsha(CLAIM_SLOT, [keys.slots], args)])
    return bool(granted)


def slots_in_use(keys: KeySchema, now: float) -> Step[int]:
    """Slots held by live sessions, on every server."""
    (held,) = yield from run([("ZCOUNT", keys.slots, f"({now!r}", "+inf")])
    return int(held)


# -- user locks -----------------------------------------------------------------------


def lock_user(keys: KeySchema, username: str, token: str, ttl_ms: int) -> Step[bool]:
    """Take the user's lock if free (it expires by itself if its holder dies)."""
    (taken,) = yield from run([("SET", keys.user_lock(username), token, "NX", "PX", ttl_ms)])
    return bool(taken)


def unlock_user(keys: KeySchema, username: str, token: str) -> Step[None]:
    """Give the user's lock back, if it is still ours."""
    yield from run([evalsha(UNLOCK, [keys.user_lock(username)], [token])])


# -- invalidation messages ------------------------------------------------------------


def parse_event(data: Any, origin: str) -> tuple[list[str], list[str]] | None:
    """``(ended, changed)`` ids of a message from another store, None for our own or junk."""
    try:
        event = json.loads(data)
        if event.get("o") == origin:
            return None
        ended, changed = event.get("e") or [], event.get("c") or []
        if not isinstance(ended, list) or not isinstance(changed, list):
            raise ValueError("ids are not lists")
        return [str(s) for s in ended], [str(s) for s in changed]
    except (ValueError, AttributeError, TypeError) as exc:
        logger.warning("ignored a malformed session event: %s", exc)
        return None
