"""Retention and marks for the Redis store: the purge scripts, mark scopes, and the upgrade of
data written by the first release. A mixin of `gateway.store.redis.RedisStore`.

Each purge script call removes at most ``policy.batch`` members of one kind, so Redis serves
other clients between calls (a script runs to its end before anything else). What a pass
reads, per kind (``P`` = prefix; layout in `gateway.store.redis`):

- ``P dl:done`` / ``P dl:dead``: delivered / dead deliveries scored by their last change;
- ``P ev:state:<state>``: events of a state, all scored 0, so ``ZRANGEBYLEX`` walks them in id
  (receive) order up to `floor_id` of the cutoff, with a cursor, as on SQLite;
- an event's ``dls`` field: its delivery ids, so an event is kept while one of them exists;
- ``P dedupe:age`` and ``P marks``: dedupe keys by first sight, plugin marks by last write.

Marks: plugin marks are hashes ``P m:<key>`` indexed in ``P marks``; the gateway's own state
(scope ``gateway``) is ``P g:<key>``, in no index, so no pass ever finds it.

Upgrade (``P schema`` below 1, i.e. data of the first release): gateway state kept among the
marks moves to ``g:``; dead deliveries are indexed in ``dl:dead``; every delivery's id is added
to its event's ``dls``. Each step is idempotent and walks with ``SCAN``-style cursors in small
script calls, so an upgrade interrupted (or run by two instances at once) is simply run again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import redis.asyncio as aioredis

from gateway.ids import floor_id
from gateway.store.base import PURGE_KINDS, Footprint, Pacer, RetentionPolicy
from gateway.store.redis_codec import num
from gateway.store.redis_scripts import _COMMON

VERSION = 1
#: Key prefixes the first release wrote among the plugin marks for the gateway's own state.
V0_GATEWAY_PREFIXES = ("paused:", "silence:", "last-seen:", "console-revoked:")
#: Members one upgrade script call handles.
UPGRADE_BATCH = 500
_SPACES = {"plugin": "m", "gateway": "g"}

# ARGV: P, state ('delivered' or 'dead'), before, batch. Removes deliveries of that state last
# changed before `before`, with their attempts. Returns {removed, attempts, members read}.
PURGE_DELIVERIES = (
    _COMMON
    + r"""
local state, before, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local idx = P .. (state == 'delivered' and 'dl:done' or 'dl:dead')
local ids = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. before, 'LIMIT', 0, n)
local removed, attempts = 0, 0
for _, id in ipairs(ids) do
  local k = P .. 'd:' .. id
  local c = redis.call('HMGET', k, 'state', 'destination', 'message_uuid')
  if c[1] == state then
    redis.call('ZREM', P .. 'dl:state:' .. c[1], id)
    redis.call('ZREM', P .. 'dl:sd:' .. c[1] .. ':' .. c[2], id)
    redis.call('ZREM', P .. 'dl:dest:' .. c[2], id)
    redis.call('ZREM', P .. 'dl:due:' .. c[2], id)
    if c[3] then redis.call('SREM', P .. 'dl:msg:' .. c[3], id) end
    redis.call('ZREM', P .. 'dl:all', id)
    redis.call('ZREM', P .. 'dl:ok:' .. c[2], id)
    redis.call('ZREM', P .. 'dl:err', id)
    attempts = attempts + redis.call('LLEN', P .. 'a:' .. id)
    redis.call('DEL', k, P .. 'a:' .. id)
    removed = removed + 1
  end
  redis.call('ZREM', idx, id)
end
return {removed, attempts, #ids}
"""
)

# ARGV: P, state, before, bound id, after id ('' = from the start), batch, field
# ('received_at' or 'updated_at'). Reads up to `batch` events of `state` with after < id <
# bound and removes those whose `field` is before `before` and that have no delivery left.
# Returns {removed, members read, last id read}.
PURGE_EVENTS = (
    _COMMON
    + r"""
local state, before, bound, after = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n, field = tonumber(ARGV[6]), ARGV[7]
local zkey = P .. 'ev:state:' .. state
local low = after == '' and '-' or '(' .. after
local ids = redis.call('ZRANGEBYLEX', zkey, low, '(' .. bound, 'LIMIT', 0, n)
local removed, last = 0, ''
for _, id in ipairs(ids) do
  last = id
  local k = P .. 'e:' .. id
  local c = redis.call('HMGET', k, 'state', field, 'dls', 'message_uuid', 'source')
  if not c[1] then
    redis.call('ZREM', zkey, id)
  elseif c[1] == state and tonumber(c[2]) < before then
    local left = false
    if c[3] then
      for did in string.gmatch(c[3], '%S+') do
        if redis.call('EXISTS', P .. 'd:' .. did) == 1 then left = true; break end
      end
    end
    if not left then
      redis.call('DEL', k)
      redis.call('ZREM', zkey, id)
      redis.call('ZREM', P .. 'ev:due', id)
      if c[4] then redis.call('SREM', P .. 'ev:msg:' .. c[4], id) end
      if c[5] then redis.call('ZREM', P .. 'src:recent:' .. c[5], id) end
      removed = removed + 1
    end
  end
end
return {removed, #ids, last}
"""
)

# ARGV: P, which ('dedupe' or 'marks'), before, batch. Returns the number removed.
PURGE_KEYS = (
    _COMMON
    + r"""
local which, before, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
if which == 'dedupe' then
  local fields = redis.call('ZRANGEBYSCORE', P .. 'dedupe:age', '-inf', '(' .. before,
    'LIMIT', 0, n)
  for _, f in ipairs(fields) do
    redis.call('HDEL', P .. 'dedupe', f)
    redis.call('HDEL', P .. 'dedupe:hits', f)
    redis.call('ZREM', P .. 'dedupe:age', f)
  end
  return #fields
end
local marks = redis.call('ZRANGEBYSCORE', P .. 'marks', '-inf', '(' .. before, 'LIMIT', 0, n)
for _, m in ipairs(marks) do
  redis.call('DEL', P .. 'm:' .. m)
  redis.call('ZREM', P .. 'marks', m)
end
return #marks
"""
)

# Upgrade steps (idempotent). ARGV: P, step, members...
UPGRADE = (
    _COMMON
    + r"""
local step = ARGV[2]
for i = 3, #ARGV do
  local m = ARGV[i]
  if step == 'gateway-mark' then
    local src = P .. 'm:' .. m
    if redis.call('EXISTS', src) == 1 then
      redis.call('RENAME', src, P .. 'g:' .. m)
    end
    redis.call('ZREM', P .. 'marks', m)
  elseif step == 'dead' then
    local c = redis.call('HMGET', P .. 'd:' .. m, 'state', 'updated_at')
    if c[1] == 'dead' then redis.call('ZADD', P .. 'dl:dead', c[2], m) end
  elseif step == 'link' then
    local eid = redis.call('HGET', P .. 'd:' .. m, 'event_id')
    if eid and redis.call('EXISTS', P .. 'e:' .. eid) == 1 then
      local dls = redis.call('HGET', P .. 'e:' .. eid, 'dls') or ''
      if not string.find(' ' .. dls .. ' ', ' ' .. m .. ' ', 1, true) then
        redis.call('HSET', P .. 'e:' .. eid, 'dls', dls .. ' ' .. m)
      end
    end
  end
end
return 1
"""
)

SCRIPTS = {
    "purge_deliveries": PURGE_DELIVERIES,
    "purge_events": PURGE_EVENTS,
    "purge_keys": PURGE_KEYS,
    "upgrade": UPGRADE,
}


def space(scope: str) -> str:
    """The key space of a mark scope (`gateway.store.base.MARK_SCOPES`)."""
    try:
        return _SPACES[scope]
    except KeyError:
        raise ValueError(f"unknown mark scope {scope!r}") from None


def _glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisRetention:
    """`Store`'s retention and mark methods on Redis (a mixin of `RedisStore`, which provides
    what is declared here)."""

    prefix: str

    @property
    def _r(self) -> aioredis.Redis:
        raise NotImplementedError

    def _mapped(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    async def _run(self, name: str, *args: Any) -> Any:
        raise NotImplementedError

    async def _batch(self, name: str, args: list[Any]) -> Any:
        raise NotImplementedError

    # -- retention ---------------------------------------------------------------------------
    async def purge(self, policy: RetentionPolicy, now: float) -> dict[str, int]:
        counts = dict.fromkeys(PURGE_KINDS, 0)
        n, pace = policy.batch, Pacer(policy)
        for state, window in (("delivered", policy.delivered), ("dead", policy.dead)):
            while True:
                removed, attempts, read = await pace(
                    self._run("purge_deliveries", state, num(now - window), n)
                )
                counts[state] += int(removed)
                counts["attempts"] += int(attempts)
                if int(read) < n:
                    break
        kinds = [
            (s, "events", policy.events, "received_at") for s in ("routed", "unmatched", "filtered")
        ]
        kinds.append(("quarantined", "quarantined", policy.quarantined, "updated_at"))
        for state, kind, window, column in kinds:
            before, after = now - window, ""
            while True:
                removed, read, last = await pace(
                    self._run(
                        "purge_events",
                        state,
                        num(before),
                        floor_id("evt", before),
                        after,
                        n,
                        column,
                    )
                )
                counts[kind] += int(removed)
                if int(read) < n:
                    break
                after = last
        for which, kind, window in (
            ("dedupe", "dedupe_keys", policy.dedupe),
            ("marks", "marks", policy.marks),
        ):
            while True:
                removed = int(await pace(self._run("purge_keys", which, num(now - window), n)))
                counts[kind] += removed
                if removed < n:
                    break
        return counts

    async def footprint(self) -> Footprint:
        """Redis's ``used_memory`` (the whole server's: keys of other prefixes included)."""
        with self._mapped():
            info = await self._r.info("memory")
        used = info.get("used_memory")
        return Footprint(bytes=int(used) if used is not None else None)

    async def count_events(self, state: str) -> int:
        with self._mapped():
            return int(await self._r.zcard(self.prefix + "ev:state:" + state))

    # -- marks -----------------------------------------------------------------------------------
    async def advance_mark(
        self, key: str, rank: str, value: str, now: float, *, scope: str = "plugin"
    ) -> tuple[bool, str | None]:
        found = await self._batch("advance_mark", [key, rank, value, num(now), space(scope)])
        return found[0] == "1", found[2:] if len(found) > 1 else None

    async def get_mark(self, key: str, *, scope: str = "plugin") -> tuple[str, str] | None:
        k = f"{self.prefix}{space(scope)}:{key}"
        with self._mapped():
            rank, value = cast("list[str | None]", await self._r.hmget(k, ["rank", "value"]))
        # rank and value are always written together (set_mark, ADVANCE_MARK)
        return None if rank is None else (rank, cast(str, value))

    async def set_mark(
        self, key: str, value: str | None, now: float, rank: str = "", *, scope: str = "plugin"
    ) -> None:
        p, sp = self.prefix, space(scope)
        with self._mapped():
            async with self._r.pipeline(transaction=True) as pipe:
                if value is None:
                    pipe.delete(f"{p}{sp}:{key}")
                    if sp == "m":
                        pipe.zrem(p + "marks", key)
                else:
                    pipe.hset(
                        f"{p}{sp}:{key}",
                        mapping={"rank": rank, "value": value, "updated_at": num(now)},
                    )
                    if sp == "m":
                        pipe.zadd(p + "marks", {key: now})
                await pipe.execute()

    # -- upgrade ----------------------------------------------------------------------------------
    async def upgrade(self) -> None:
        """Bring data of an earlier release to `VERSION` (see the module docstring)."""
        p = self.prefix
        with self._mapped():
            found = await self._r.get(p + "schema")
        if found is not None and int(found) >= VERSION:
            return
        with self._mapped():
            if not await self._r.exists(p + "dedupe:age", p + "dl:all", p + "marks"):
                await self._r.set(p + "schema", VERSION)  # a new store: nothing to upgrade
                return
        for prefix in V0_GATEWAY_PREFIXES:
            await self._upgrade_members(p + "marks", "gateway-mark", _glob(prefix) + "*")
        await self._upgrade_members(p + "dl:state:dead", "dead")
        await self._upgrade_members(p + "dl:all", "link")
        with self._mapped():
            await self._r.set(p + "schema", VERSION)

    async def _upgrade_members(self, key: str, step: str, match: str | None = None) -> None:
        for chunk in self._chunks(await self._scan(key, match)):
            await self._run("upgrade", step, *chunk)

    async def _scan(self, key: str, match: str | None) -> list[str]:
        members: list[str] = []
        with self._mapped():
            async for member, _ in self._r.zscan_iter(key, match=match, count=1000):
                members.append(member)
        return members

    @staticmethod
    def _chunks(items: list[str]) -> Iterator[list[str]]:
        for i in range(0, len(items), UPGRADE_BATCH):
            yield items[i : i + UPGRADE_BATCH]
