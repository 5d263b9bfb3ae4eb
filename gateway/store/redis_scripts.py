"""Lua scripts of the Redis store: every multi-key change is one script, so it is atomic
(Redis runs a script to the end before serving any other client) and costs one round trip.

Conventions (shared by all scripts):

- ``ARGV[1]`` is the key prefix; keys are built inside the script (see the layout in
  `gateway.store.redis`). That is fine on a single Redis server (with or without replicas and
  Sentinel), not on Redis Cluster.
- Numbers travel as strings and are stored as given: Lua's ``tostring`` keeps only 14
  significant digits, which would round epoch times, so scripts compare with ``tonumber`` but
  never format a computed number.
- Optional values are ``""`` for None and ``"=" .. value`` otherwise (`opt` below), so an empty
  string stays distinguishable from None.
- Scripts read and check everything before their first write, so a script that fails (a wrong
  argument, a key of the wrong type) fails before changing anything.
- `INGEST`, `FINISH_EVENT`, `FINISH_ATTEMPT` and `ADVANCE_MARK` take a group of calls
  (``batch`` below, and `gateway.store.redis_batch`): each call is checked and written on its
  own, and one that fails is reported in its own result slot without stopping the others.
"""

from __future__ import annotations

_COMMON = r"""
local P = ARGV[1]
local function opt(s) if s == nil or s == '' then return nil end return string.sub(s, 2) end
local function set_opt(key, field, s)
  local v = opt(s)
  if v == nil then redis.call('HDEL', key, field) else redis.call('HSET', key, field, v) end
end
local function ev_move(id, old, new)
  if old == new then return end
  if old then redis.call('ZREM', P .. 'ev:state:' .. old, id) end
  redis.call('ZADD', P .. 'ev:state:' .. new, 0, id)
end
local function dl_move(id, dest, old, new, created)
  if old == new then return end
  if old then
    redis.call('ZREM', P .. 'dl:state:' .. old, id)
    redis.call('ZREM', P .. 'dl:sd:' .. old .. ':' .. dest, id)
  end
  redis.call('ZADD', P .. 'dl:state:' .. new, created, id)
  redis.call('ZADD', P .. 'dl:sd:' .. new .. ':' .. dest, created, id)
end
-- Batched scripts: ARGV[2] calls follow from ARGV[3]; `size(b)` is the number of arguments of
-- the call starting at ARGV[b] and `one(b)` handles it (checks first, then writes) and returns
-- its result string. A call that raises is reported as '!' .. message and the next one runs.
local function batch(size, one)
  local out, b = {}, 3
  for c = 1, tonumber(ARGV[2]) do
    local ok, res = pcall(one, b)
    if ok then
      out[c] = res
    elseif type(res) == 'table' then
      out[c] = '!' .. tostring(res.err or res)
    else
      out[c] = '!' .. tostring(res)
    end
    b = b + size(b)
  end
  return out
end
local function want_type(key, t)
  local found = redis.call('TYPE', P .. key)['ok']
  if found ~= 'none' and found ~= t then
    error(P .. key .. ' holds a ' .. found .. ', not a ' .. t)
  end
end
-- Seconds of recent arrivals and deliveries kept for the console (ACTIVITY_WINDOW and more).
local RECENT = 3900
local ERRORS_KEPT = 1000
local function with_id(id, flat) table.insert(flat, 'id'); table.insert(flat, id); return flat end
local function delivery_record(id)
  local flat = redis.call('HGETALL', P .. 'd:' .. id)
  if #flat == 0 then return nil end
  local eid = redis.call('HGET', P .. 'd:' .. id, 'event_id')
  local ev = redis.call('HMGET', P .. 'e:' .. eid, 'raw', 'received_at')
  table.insert(flat, 'raw'); table.insert(flat, ev[1] or '')
  table.insert(flat, 'received_at'); table.insert(flat, ev[2] or '0')
  return with_id(id, flat)
end
"""

# Batched (see `gateway.store.redis_batch`): ARGV: P, number of calls, then per call: source,
# now, lease owner ('' for none), lease until, n, then per item: dedupe key, event id, raw,
# state, message_uuid (opt), event (opt), reason (opt). Returns per call a string with one
# flag per item ('1' stored, '0' duplicate), or '!' and the error when the call failed (then
# it wrote nothing).
INGEST = (
    _COMMON
    + r"""
local function ingest_one(b)
  local source, now, owner, untl = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local n = tonumber(ARGV[b + 4])
  local scope = #source .. ':' .. source .. ':'
  for _, k in ipairs({'dedupe', 'dedupe:hits'}) do want_type(k, 'hash') end
  for _, k in ipairs({'dedupe:age', 'ev:due', 'ev:state:received', 'ev:state:quarantined'}) do
    want_type(k, 'zset')
  end
  local flags, seen = {}, {}
  for i = 0, n - 1 do
    local j = b + 5 + i * 7
    local field = scope .. ARGV[j]
    if seen[field] or redis.call('HEXISTS', P .. 'dedupe', field) == 1 then
      flags[i + 1] = '0'
    else
      if redis.call('EXISTS', P .. 'e:' .. ARGV[j + 1]) == 1 then
        error('event id ' .. ARGV[j + 1] .. ' is taken')
      end
      flags[i + 1] = '1'
      seen[field] = true
    end
  end
  for i = 0, n - 1 do
    local j = b + 5 + i * 7
    local field, id, state = scope .. ARGV[j], ARGV[j + 1], ARGV[j + 3]
    if flags[i + 1] == '0' then
      redis.call('HINCRBY', P .. 'dedupe:hits', field, 1)
    else
      redis.call('HSET', P .. 'dedupe', field, id)
      redis.call('ZADD', P .. 'dedupe:age', now, field)
      local k = P .. 'e:' .. id
      redis.call('HSET', k, 'source', source, 'received_at', now, 'raw', ARGV[j + 2],
        'state', state, 'updated_at', now, 'route_attempts', 0, 'next_route_at', 0, 'recheck', 0)
      set_opt(k, 'message_uuid', ARGV[j + 4])
      local uuid = opt(ARGV[j + 4])
      if uuid then redis.call('SADD', P .. 'ev:msg:' .. uuid, id) end
      redis.call('ZADD', P .. 'src:recent:' .. source, now, id)
      set_opt(k, 'event', ARGV[j + 5])
      set_opt(k, 'reason', ARGV[j + 6])
      ev_move(id, nil, state)
      -- Fresh events are due from their arrival, so the router takes them oldest first and
      -- held or expired events wait behind no more than what arrived before them.
      -- An event leased at intake is routed from memory by the process that received it;
      -- others may claim it only once the lease has expired.
      if state == 'received' and owner ~= '' then
        redis.call('HSET', k, 'lease_until', untl, 'leased_by', owner)
        redis.call('ZADD', P .. 'ev:due', untl, id)
      elseif state == 'received' then
        redis.call('ZADD', P .. 'ev:due', now, id)
      end
    end
  end
  -- The console's per-source figures: the latest arrival, and the last hour and a bit of
  -- arrivals (older ones are trimmed here, so the set stays small without a purge).
  local last = redis.call('HGET', P .. 'src:last', source)
  if not last or tonumber(last) < tonumber(now) then
    redis.call('HSET', P .. 'src:last', source, now)
  end
  redis.call('ZREMRANGEBYSCORE', P .. 'src:recent:' .. source, '-inf',
    '(' .. (tonumber(now) - RECENT))
  return table.concat(flags)
end
return batch(function(b) return 5 + tonumber(ARGV[b + 4]) * 7 end, ingest_one)
"""
)

# ARGV: P, owner, now, lease until, limit. Returns flat hashes (with 'id') of the claimed events.
CLAIM_EVENTS = (
    _COMMON
    + r"""
local owner, now, untl = ARGV[2], ARGV[3], ARGV[4]
local nnow = tonumber(now)
local out = {}
local ids = redis.call('ZRANGEBYSCORE', P .. 'ev:due', '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
  local k = P .. 'e:' .. id
  local cur = redis.call('HMGET', k, 'state', 'lease_until')
  if cur[1] ~= 'received' then
    redis.call('ZREM', P .. 'ev:due', id)
  elseif not cur[2] or tonumber(cur[2]) < nnow then
    redis.call('HSET', k, 'lease_until', untl, 'leased_by', owner)
    redis.call('ZADD', P .. 'ev:due', untl, id)
    table.insert(out, with_id(id, redis.call('HGETALL', k)))
  end
end
return out
"""
)

# Batched: ARGV: P, number of calls, then per call: event id, state, now, reason (opt), n, then
# per delivery: id, route, destination, next_attempt_at, enrichment JSON. Returns per call '1',
# '0' when the event was no longer 'received' (nothing written), or '!' and the error.
FINISH_EVENT = (
    _COMMON
    + r"""
local function finish_one(b)
  local eid, state, now, n = ARGV[b], ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 4])
  local k = P .. 'e:' .. eid
  local cur = redis.call('HMGET', k, 'state', 'source', 'message_uuid', 'dls')
  if cur[1] ~= 'received' then return '0' end
  local fresh = {}
  for i = 0, n - 1 do fresh[i + 1] = redis.call('EXISTS', P .. 'd:' .. ARGV[b + 5 + i * 5]) == 0 end
  redis.call('HSET', k, 'state', state, 'recheck', 0, 'updated_at', now)
  redis.call('HDEL', k, 'lease_until', 'leased_by')
  set_opt(k, 'reason', ARGV[b + 3])
  redis.call('ZREM', P .. 'ev:due', eid)
  ev_move(eid, 'received', state)
  local dls = cur[4] or ''
  for i = 0, n - 1 do
    local j = b + 5 + i * 5
    local id, dest, due = ARGV[j], ARGV[j + 2], ARGV[j + 3]
    if fresh[i + 1] then
      local d = P .. 'd:' .. id
      redis.call('HSET', d, 'event_id', eid, 'source', cur[2], 'route', ARGV[j + 1],
        'destination', dest, 'state', 'pending', 'attempts', 0, 'next_attempt_at', due,
        'created_at', now, 'updated_at', now, 'enrichment', ARGV[j + 4])
      if cur[3] then
        redis.call('HSET', d, 'message_uuid', cur[3])
        redis.call('SADD', P .. 'dl:msg:' .. cur[3], id)
      end
      redis.call('ZADD', P .. 'dl:all', now, id)
      redis.call('ZADD', P .. 'dl:dest:' .. dest, now, id)
      dl_move(id, dest, nil, 'pending', now)
      redis.call('ZADD', P .. 'dl:due:' .. dest, due, id)
      redis.call('SADD', P .. 'dl:dests', dest)
      dls = dls .. ' ' .. id
    end
  end
  -- The event's deliveries, so that retention keeps it while one of them is left.
  if dls ~= '' then redis.call('HSET', k, 'dls', dls) end
  return '1'
end
return batch(function(b) return 5 + tonumber(ARGV[b + 4]) * 5 end, finish_one)
"""
)

# ARGV: P, event id, reason, retry at, now.
HOLD_EVENT = (
    _COMMON
    + r"""
local eid, retry_at, now = ARGV[2], ARGV[4], ARGV[5]
local k = P .. 'e:' .. eid
local state = redis.call('HGET', k, 'state')
if not state then return 0 end
redis.call('HSET', k, 'reason', ARGV[3], 'next_route_at', retry_at, 'updated_at', now)
redis.call('HINCRBY', k, 'route_attempts', 1)
redis.call('HDEL', k, 'lease_until', 'leased_by')
if state == 'received' then redis.call('ZADD', P .. 'ev:due', retry_at, eid) end
return 1
"""
)

# ARGV: P, event id, reason, now.
QUARANTINE_EVENT = (
    _COMMON
    + r"""
local eid = ARGV[2]
local k = P .. 'e:' .. eid
local state = redis.call('HGET', k, 'state')
if not state then return 0 end
redis.call('HSET', k, 'state', 'quarantined', 'reason', ARGV[3], 'recheck', 0,
  'updated_at', ARGV[4])
redis.call('HDEL', k, 'lease_until', 'leased_by')
redis.call('ZREM', P .. 'ev:due', eid)
ev_move(eid, state, 'quarantined')
return 1
"""
)

# ARGV: P, now, all ('1' = every quarantined event, else only the ids that follow), ids...
REPLAY_QUARANTINED = (
    _COMMON
    + r"""
local now = ARGV[2]
local ids = {}
if ARGV[3] == '1' then
  ids = redis.call('ZRANGE', P .. 'ev:state:quarantined', 0, -1)
else
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local out = {}
for _, id in ipairs(ids) do
  local k = P .. 'e:' .. id
  if redis.call('HGET', k, 'state') == 'quarantined' then
    redis.call('HSET', k, 'state', 'received', 'recheck', 1, 'next_route_at', now,
      'updated_at', now)
    redis.call('ZADD', P .. 'ev:due', now, id)
    ev_move(id, 'quarantined', 'received')
    out[#out + 1] = id
  end
end
return out
"""
)

# ARGV: P, owner, destination, now, lease until, limit. Returns delivery records (flat hashes
# with 'id', 'raw' and 'received_at'). The due set scores a pending delivery by its
# next_attempt_at and one in flight by its lease end, so an expired lease makes it due again.
CLAIM_DELIVERIES = (
    _COMMON
    + r"""
local owner, dest, now, untl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nnow = tonumber(now)
local due = P .. 'dl:due:' .. dest
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))) do
  local k = P .. 'd:' .. id
  local c = redis.call('HMGET', k, 'state', 'next_attempt_at', 'lease_until', 'created_at')
  if c[1] == 'pending' and tonumber(c[2]) <= nnow
      or c[1] == 'in_flight' and c[3] and tonumber(c[3]) < nnow then
    redis.call('HSET', k, 'state', 'in_flight', 'lease_until', untl, 'leased_by', owner,
      'updated_at', now)
    redis.call('ZADD', due, untl, id)
    dl_move(id, dest, c[1], 'in_flight', c[4])
    table.insert(out, delivery_record(id))
  elseif c[1] ~= 'pending' and c[1] ~= 'in_flight' then
    redis.call('ZREM', due, id)
  end
end
return out
"""
)

# Batched: ARGV: P, number of calls, then per call: delivery id, attempt JSON, state,
# next_attempt_at (opt), counts (0/1), now, started_at, error (opt), status (opt). Returns per
# call '1', '0' for an unknown delivery, or '!' and the error.
FINISH_ATTEMPT = (
    _COMMON
    + r"""
local function finish_one(b)
  local id, state, now = ARGV[b], ARGV[b + 2], ARGV[b + 5]
  local k = P .. 'd:' .. id
  local c = redis.call('HMGET', k, 'state', 'destination', 'created_at', 'next_attempt_at',
    'first_attempt_at')
  if not c[1] then return '0' end
  local nat = opt(ARGV[b + 3]) or c[4]
  redis.call('RPUSH', P .. 'a:' .. id, ARGV[b + 1])
  redis.call('HSET', k, 'state', state, 'next_attempt_at', nat, 'updated_at', now)
  redis.call('HINCRBY', k, 'attempts', tonumber(ARGV[b + 4]))
  if not c[5] then redis.call('HSET', k, 'first_attempt_at', ARGV[b + 6]) end
  set_opt(k, 'last_error', ARGV[b + 7])
  set_opt(k, 'last_status', ARGV[b + 8])
  redis.call('HDEL', k, 'lease_until', 'leased_by')
  dl_move(id, c[2], c[1], state, c[3])
  if state == 'pending' then
    redis.call('ZADD', P .. 'dl:due:' .. c[2], nat, id)
  else
    redis.call('ZREM', P .. 'dl:due:' .. c[2], id)
  end
  if state == 'delivered' then
    redis.call('ZADD', P .. 'dl:done', now, id)
    -- Delivered lately per destination (the console), trimmed to the recent window here.
    local ok = P .. 'dl:ok:' .. c[2]
    redis.call('ZADD', ok, now, id)
    redis.call('ZREMRANGEBYSCORE', ok, '-inf', '(' .. (tonumber(now) - RECENT))
  else
    redis.call('ZREM', P .. 'dl:done', id)
  end
  -- The latest failures (the console), capped to the newest ERRORS_KEPT.
  if ARGV[b + 7] ~= '' and state ~= 'delivered' then
    redis.call('ZADD', P .. 'dl:err', now, id)
    redis.call('ZREMRANGEBYRANK', P .. 'dl:err', 0, -(ERRORS_KEPT + 1))
  else
    redis.call('ZREM', P .. 'dl:err', id)
  end
  if state == 'dead' then
    redis.call('ZADD', P .. 'dl:dead', now, id)
  else
    redis.call('ZREM', P .. 'dl:dead', id)
  end
  return '1'
end
return batch(function() return 9 end, finish_one)
"""
)

# ARGV: P, now, ids... Only deliveries in flight go back (pending, due no later than now).
RELEASE = (
    _COMMON
    + r"""
local now = ARGV[2]
for i = 3, #ARGV do
  local id = ARGV[i]
  local k = P .. 'd:' .. id
  local c = redis.call('HMGET', k, 'state', 'destination', 'created_at', 'next_attempt_at')
  if c[1] == 'in_flight' then
    local nat = c[4]
    if tonumber(now) < tonumber(nat) then nat = now end
    redis.call('HSET', k, 'state', 'pending', 'next_attempt_at', nat, 'updated_at', now)
    redis.call('HDEL', k, 'lease_until', 'leased_by')
    dl_move(id, c[2], 'in_flight', 'pending', c[3])
    redis.call('ZADD', P .. 'dl:due:' .. c[2], nat, id)
  end
end
return 1
"""
)

# ARGV: P, now, required state ('' = any but in_flight), ids... Returns the ids replayed.
REPLAY_DELIVERIES = (
    _COMMON
    + r"""
local now, want = ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local k = P .. 'd:' .. id
  local c = redis.call('HMGET', k, 'state', 'destination', 'created_at')
  if c[1] and c[1] ~= 'in_flight' and (want == '' or c[1] == want) then
    redis.call('HSET', k, 'state', 'pending', 'attempts', 0, 'next_attempt_at', now,
      'updated_at', now)
    redis.call('HDEL', k, 'first_attempt_at')
    dl_move(id, c[2], c[1], 'pending', c[3])
    redis.call('ZADD', P .. 'dl:due:' .. c[2], now, id)
    redis.call('ZREM', P .. 'dl:done', id)
    redis.call('ZREM', P .. 'dl:dead', id)
    out[#out + 1] = id
  end
end
return out
"""
)

# ARGV: P, ids... Returns delivery records (missing ids are left out).
FETCH_DELIVERIES = (
    _COMMON
    + r"""
local out = {}
for i = 2, #ARGV do
  local rec = delivery_record(ARGV[i])
  if rec then out[#out + 1] = rec end
end
return out
"""
)

# Batched: ARGV: P, number of calls, then per call: key, rank, value, now, space ('m' for
# plugin marks, indexed by update time in 'marks' for retention; 'g' for the gateway's own
# state, never purged). Returns per call
# '1' (advanced) or '0', then the previous value as `opt` encodes it ('' for none).
# Ranks compare byte by byte (like SQLite's BINARY collation); Lua's `<` would use the
# server's locale.
ADVANCE_MARK = (
    _COMMON
    + r"""
local function below(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function advance_one(b)
  local key, rank, now, space = ARGV[b], ARGV[b + 1], ARGV[b + 3], ARGV[b + 4]
  if space ~= 'm' and space ~= 'g' then error('unknown mark space ' .. space) end
  local k = P .. space .. ':' .. key
  local cur = redis.call('HMGET', k, 'rank', 'value')
  local previous = cur[2] and ('=' .. cur[2]) or ''
  if cur[1] and not below(cur[1], rank) then return '0' .. previous end
  if space == 'm' then want_type('marks', 'zset') end
  redis.call('HSET', k, 'rank', rank, 'value', ARGV[b + 2], 'updated_at', now)
  if space == 'm' then redis.call('ZADD', P .. 'marks', now, key) end
  return '1' .. previous
end
return batch(function() return 5 end, advance_one)
"""
)

SCRIPTS = {
    "ingest": INGEST,
    "claim_events": CLAIM_EVENTS,
    "finish_event": FINISH_EVENT,
    "hold_event": HOLD_EVENT,
    "quarantine_event": QUARANTINE_EVENT,
    "replay_quarantined": REPLAY_QUARANTINED,
    "claim_deliveries": CLAIM_DELIVERIES,
    "finish_attempt": FINISH_ATTEMPT,
    "release": RELEASE,
    "replay_deliveries": REPLAY_DELIVERIES,
    "fetch_deliveries": FETCH_DELIVERIES,
    "advance_mark": ADVANCE_MARK,
}
