"""Lua scripts of the Redis store: each runs atomically on the server that owns its keys.

A script only touches keys passed in KEYS, and the store passes keys of one hash slot
per call on a cluster, so scripts never cross slots.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (computed once: every write names it), for EVALSHA with
    an EVAL fallback."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Apply a batch of writes. KEYS: hash and tombstone of each operation, in order, then
# the index keys the batch updates (one server only). ARGV: now_ms, tombstone_ttl_ms,
# channel, origin, the number of operations, then per operation either
#   "D", id, ended_at
#   "U", id, mode ("C" create / "F" full / "P" partial / "S" same creation only /
#        "R" followed by an id: a rotation of that id, ended earlier in this call: "S"
#        if its end found no hash, else "C"),
#        expires_ms, expires, accessed,
#        notify, nset, ndel, nset field/value pairs, ndel field names
# then, optionally, the batch's index updates: their number, then per command its name,
# the number of its arguments and the arguments, its key being the next after the
# operations' keys: on one server a commit is one command, where the indexes would
# otherwise take another (flat, not JSON: the encoding cost a commit 5 µs of the caller's
# CPU, and its decoding some of Redis's).
# Returns one status per operation: 1 written, 0 refused (ended), 2 gone (a partial
# write of a session not in Redis: expired, evicted, or lost in a restart), 3 lapsed (an
# end of a session Redis no longer held), or, for a create refused because another session
# holds the id, that session's user (a string).
# Why each step:
# - the tombstone is checked only when the hash is missing: an ended session has no
#   hash, so a live hash proves no tombstone applies (one read instead of two);
# - only a full write ("C", "F") brings a missing hash into being: a late partial write
#   never recreates a session Redis dropped;
# - an end finding no hash reports it (3), so the writer can refuse the rotation of that
#   session, sending its new id as "S": written only over the same creation (a retried
#   batch whose first attempt got through), never into a missing hash; a rotation sent in
#   the same call ("R") is turned into "S" or "C" here, saving a login a round trip;
# - a create ("C") finding a hash is the same creation sent again (a retried batch) only
#   when its "@user" and "@created" match; otherwise the id is another's and nothing is
#   written;
# - "@expires" (exact) and the TTL (PEXPIREAT, in ms rounded up) only move forward, and
#   "@accessed" too: a late or retried write never shortens expiry or rolls time back;
# - ids ended or changed are published from inside the script, after the write, so a
#   server that drops its cached copy and reloads sees the new state.
APPLY = Script(
    """
local now, tomb_ttl, nops = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local status, ended, changed, lapsed = {}, {}, {}, {}
local i = 6
local function hset(h, list)
  for s = 1, #list, 512 do
    redis.call('HSET', h, unpack(list, s, math.min(s + 511, #list)))
  end
end
local function same_creation(list, user, created)
  for f = 1, #list, 2 do
    if (list[f] == '@user' and list[f + 1] ~= user)
      or (list[f] == '@created' and list[f + 1] ~= created) then
      return false
    end
  end
  return true
end
for k = 1, 2 * nops, 2 do
  local h, t = KEYS[k], KEYS[k + 1]
  if ARGV[i] == 'D' then
    local gone = redis.call('DEL', h) == 0
    redis.call('SET', t, ARGV[i + 2], 'PX', tomb_ttl)
    ended[#ended + 1] = ARGV[i + 1]
    if gone then lapsed[ARGV[i + 1]] = true end
    status[#status + 1] = gone and 3 or 1
    i = i + 3
  else
    local sid, mode, exp_ms, exp = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
    if string.sub(mode, 1, 1) == 'R' then
      mode = lapsed[string.sub(mode, 2)] and 'S' or 'C'
    end
    local accessed, notify = ARGV[i + 5], ARGV[i + 6]
    local nset, ndel = tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
    local j = i + 9
    local fields = {}
    for f = j, j + 2 * nset - 1 do fields[#fields + 1] = ARGV[f] end
    local current = redis.call('HMGET', h, '@accessed', '@expires', '@user', '@created')
    if not current[1] then
      if redis.call('EXISTS', t) == 1 then
        status[#status + 1] = 0
      elseif mode == 'P' or mode == 'S' then
        status[#status + 1] = 2
      else
        if exp_ms > now then
          for _, v in ipairs({'@accessed', accessed, '@expires', exp}) do
            fields[#fields + 1] = v
          end
          hset(h, fields)
          redis.call('PEXPIREAT', h, exp_ms)
        end
        status[#status + 1] = 1
      end
    elseif (mode == 'C' or mode == 'S') and not same_creation(fields, current[3], current[4]) then
      status[#status + 1] = current[3] or ''
    else
      if tonumber(accessed) > tonumber(current[1]) then
        fields[#fields + 1] = '@accessed'
        fields[#fields + 1] = accessed
      end
      local longer = tonumber(exp) > tonumber(current[2] or '0')
      if longer then
        fields[#fields + 1] = '@expires'
        fields[#fields + 1] = exp
      end
      if ndel > 0 then
        redis.call('HDEL', h, unpack(ARGV, j + 2 * nset, j + 2 * nset + ndel - 1))
      end
      if #fields > 0 then hset(h, fields) end
      if longer then redis.call('PEXPIREAT', h, exp_ms, 'GT') end
      if notify == '1' then changed[#changed + 1] = sid end
      status[#status + 1] = 1
    end
    i = j + 2 * nset + ndel
  end
end
for n = 1, tonumber(ARGV[i]) or 0 do
  local nargs = tonumber(ARGV[i + 2])
  redis.call(ARGV[i + 1], KEYS[2 * nops + n], unpack(ARGV, i + 3, i + 2 + nargs))
  i = i + 2 + nargs
end
if #ended > 0 or #changed > 0 then
  redis.call('PUBLISH', ARGV[3], cjson.encode({o = ARGV[4], e = ended, c = changed}))
end
return status
"""
)


# Release a user lock only if this server still holds it (its token), never another's
# lock taken after ours expired. KEYS: the lock. ARGV: the token.
UNLOCK = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


# Claim a live-session slot under a limit shared by every server. KEYS: the slot set.
# ARGV: id, expires_at, now, limit, then ids this server ended whose end may not be
# written yet. Slots of expired sessions are dropped first (their scores follow the
# sessions' expiry); an id already holding a slot keeps it; the slot of one of the
# ended ids, if still held, is handed over (an end frees its slot on its own server at
# once, before the end is flushed). 1 or 0.
CLAIM_SLOT = Script(
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
  return 1
end
for i = 5, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
    return 1
  end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""
)


# Bring the pool's slot set up to a written batch. KEYS: the slot set. ARGV: the number of
# rotations, then per rotation the new id, its expiry, the number of earlier ids and those
# ids (newest first); the number of other written sessions, then their expiry/id pairs;
# then the ids ended. Scores follow expiry and only grow; a rotation's new id takes the
# slot of the first earlier id still holding one (a retried write finds the new id
# holding it already); an end frees its slot. Nothing is ever added: only CLAIM_SLOT adds
# a slot, under the limit, so a write that lands after its session's slot was handed
# over or freed cannot bring it back. One script, so its steps keep their order even
# when it is sent again after a NOSCRIPT. Returns how many slots moved.
SYNC_SLOTS = Script(
    """
local key, i, moved = KEYS[1], 2, 0
for _ = 1, tonumber(ARGV[1]) do
  local sid, score, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if redis.call('ZSCORE', key, sid) then
    redis.call('ZADD', key, 'XX', 'GT', score, sid)
  else
    for k = i + 3, i + 2 + n do
      if redis.call('ZREM', key, ARGV[k]) == 1 then
        redis.call('ZADD', key, score, sid)
        moved = moved + 1
        break
      end
    end
  end
  i = i + 3 + n
end
local last = i + 2 * tonumber(ARGV[i])
for s = i + 1, last, 512 do
  redis.call('ZADD', key, 'XX', 'GT', unpack(ARGV, s, math.min(s + 511, last)))
end
for s = last + 1, #ARGV, 512 do
  redis.call('ZREM', key, unpack(ARGV, s, math.min(s + 511, #ARGV)))
end
return moved
"""
)


# Write new sessions in full, many per call (a migration, a burst of logins): the bulk
# path of a large batch. KEYS: the index keys (ARGV[3] expiry shards, then the slot set
# if ARGV[4] is '1'), then the sessions' hashes, then their tombstones, then (when
# ARGV[2] is '1') their user indexes (an anonymous session's, user '', stays unused),
# in the same order. ARGV: now_ms, indexed ('1':
# the indexes are written here; '0': the caller sends them, as on a cluster where they
# live in other slots), nshards, pooled (the slots of the sessions written get their
# scores; a slot is never added here), layout version, and the sessions as one JSON
# array holding, per session:
#   id, shard (1-based), expires_ms, user, created, absolute, accessed, expires, create
#   (1: a create, "C" of APPLY; 0: a full write, "F"), npairs, npairs field/value pairs
#   (attributes, client address, user agent)
# Returns one status per session as APPLY does: 1 written, 0 refused (ended), or the user
# of the session holding the id a create wanted. The rules of APPLY in full and create
# mode: a tombstone refuses; a create finding another creation's hash writes nothing;
# otherwise an existing hash keeps a later access and a longer expiry. Why a second
# script: the sessions travel as one JSON text (a client packs one argument rather than
# twenty per session, and cjson decodes it in C); one EXISTS over
# every hash and tombstone tells whether any session is known at all, so a chunk of new
# ids (a first migration) skips the per-session checks; constant field names stay here;
# and on one server the indexes are written here too: a chunk is one command, not one
# per user.
BULK_CREATE = Script(
    """
local now, indexed, nshards = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local pooled, layout = ARGV[4] == '1', ARGV[5]
local data = cjson.decode(ARGV[6])
local call, unpack = redis.call, unpack
local base = nshards + (pooled and 1 or 0)
local n = (#KEYS - base) / (indexed and 3 or 2)
local status, scored, slotted = {}, {}, {}
local function many(cmd, key, opt, list)
  if #list <= 1024 and not opt then return call(cmd, key, unpack(list)) end
  for s = 1, #list, 512 do
    local last = math.min(s + 511, #list)
    if opt then call(cmd, key, opt, unpack(list, s, last))
    else call(cmd, key, unpack(list, s, last)) end
  end
end
local known = 0
for s = base + 1, base + 2 * n, 512 do
  known = known + call('EXISTS', unpack(KEYS, s, math.min(s + 511, base + 2 * n)))
end
local d = 1
for k = 1, n do
  local h, t = KEYS[base + k], KEYS[base + n + k]
  local sid, shard, exp_ms, user = data[d], data[d + 1], data[d + 2], data[d + 3]
  local created, accessed, expires = data[d + 4], data[d + 6], data[d + 7]
  local create = data[d + 8] == 1
  local fields = {'@v', layout, '@user', user, '@created', created, '@absolute', data[d + 5]}
  local j, m = d + 10, 8
  d = j + 2 * data[d + 9]
  for f = j, d - 1 do m = m + 1; fields[m] = data[f] end
  local current = nil
  if known > 0 and call('EXISTS', h, t) > 0 then
    current = call('HMGET', h, '@accessed', '@expires', '@user', '@created')
  end
  -- 1 written, 0 refused, 2 expired on arrival (nothing to index), 3 taken
  local state = 1
  if current and current[1] and create and (current[3] ~= user or current[4] ~= created) then
    state = 3
  elseif not current or not current[1] then
    if current and call('EXISTS', t) == 1 then
      state = 0
    elseif exp_ms > now then
      fields[m + 1], fields[m + 2], fields[m + 3], fields[m + 4] =
        '@accessed', accessed, '@expires', expires
      many('HSET', h, nil, fields)
      call('PEXPIREAT', h, exp_ms)
    else
      state = 2
    end
  else
    if tonumber(accessed) > tonumber(current[1]) then
      fields[m + 1], fields[m + 2], m = '@accessed', accessed, m + 2
    end
    local longer = tonumber(expires) > tonumber(current[2] or '0')
    if longer then fields[m + 1], fields[m + 2] = '@expires', expires end
    many('HSET', h, nil, fields)
    if longer then call('PEXPIREAT', h, exp_ms, 'GT') end
  end
  if state == 3 then status[k] = current[3] or '' else status[k] = state == 0 and 0 or 1 end
  if state == 1 and indexed then
    if user ~= '' then call('ZADD', KEYS[base + 2 * n + k], 'NX', created, sid) end
    local list = scored[shard]
    if not list then list = {}; scored[shard] = list end
    list[#list + 1] = expires
    list[#list + 1] = sid .. ':' .. user
    if pooled then
      slotted[#slotted + 1] = expires
      slotted[#slotted + 1] = sid
    end
  end
end
for shard, list in pairs(scored) do many('ZADD', KEYS[shard], 'GT', list) end
if #slotted > 0 then
  for s = 1, #slotted, 512 do
    call('ZADD', KEYS[nshards + 1], 'XX', 'GT', unpack(slotted, s, math.min(s + 511, #slotted)))
  end
end
return status
"""
)


# Read many session hashes in one call, on one server (a script may not cross the slots
# of a cluster). KEYS: the hashes. Returns each hash as HGETALL does (empty when gone).
# Why a script: a pipeline of HGETALL costs the client a command packed and a reply
# turned into a dict per session; one call carries every key and one nested reply.
LOAD_HASHES = Script(
    """
local found = {}
for k = 1, #KEYS do found[k] = redis.call('HGETALL', KEYS[k]) end
return found
"""
)
