"""Redis store: several gateway instances share one Redis server and its queue.

``store: redis://[:password@]host:6379/0?prefix=cg:`` (``rediss://`` for TLS). Every key lives
under the prefix (default ``callback-gateway:``), so one server can hold several gateways and
tests can clean up exactly what they made. Other query parameters go to redis-py
(``socket_timeout``, ``max_connections``...).

Work distribution: leases on sorted sets, not Streams. Received events sit in ``ev:due`` and
each destination's deliveries in ``dl:due:<destination>``, scored by the time they become
claimable. A claim (one Lua script, atomic) takes members scored at most `now`, marks them
leased/``in_flight`` and re-scores them to the lease end, so the work of an instance that dies
becomes due again for the others when its lease runs out, and finishing re-scores it to its next
try or removes it. Streams with consumer groups and ``XAUTOCLAIM`` were the alternative; they
were not chosen because retries are scheduled in time, which a stream does not model (it would
need sorted sets beside it and a mover between the two), because the engine claims per
destination with a limit and listing/replay need random access, and because one mechanism then
covers fresh work, retries and takeover after a crash, with the exact semantics of the SQLite
store's conditional UPDATEs (this is the sorted-set "reliable queue" pattern of Sidekiq or
BullMQ's delayed jobs).

Dedupe is atomic across instances: `ingest` is one script that checks every key of the body
(``HEXISTS`` on the ``dedupe`` hash) and then stores the new events, so two instances receiving
the same resend at the same moment store it once. Concurrent `ingest`, `finish_event`,
`finish_attempt` and `advance_mark` calls of one instance share one script call (group commit,
`gateway.store.redis_batch`); each call is still checked and written on its own, and a call
returns once Redis has answered the script that carried it.

Durability is Redis's persistence, checked at `open` (`Persistence`; a WARNING on the
``gateway.store`` logger names the risk). A reply comes after Redis applied the write; with
``appendonly yes`` + ``appendfsync always`` Redis fsyncs the AOF before replying, so an
acknowledged callback survives a crash or power loss (like SQLite ``synchronous=FULL``). With
``everysec`` up to about a second of acknowledged events is lost if the Redis *host* crashes or
loses power (a Redis process crash or restart loses nothing); with RDB snapshots only, whatever
arrived since the last snapshot is lost on a crash; with no persistence everything is lost on a
restart. Replication is asynchronous: a failover to a replica can lose the last writes.

Key layout (``P`` = prefix)::

    P dedupe / dedupe:age / dedupe:hits    hash (source,key)->event id / zset by first seen / hits
    P e:<id>                               event hash
    P ev:due                               zset of 'received' events by due time (lease end)
    P ev:state:<state>                     zset (score 0, so id order) of events per state
    P d:<id>  /  P a:<id>                  delivery hash / list of its attempts (JSON)
    P dl:due:<dest>  /  P dl:dests         zset of pending+in flight by due time / destinations
    P dl:all, dl:state:<s>, dl:dest:<d>,   zsets by created_at for listing without scans
      dl:sd:<s>:<d>
    P dl:msg:<message_uuid>                set of delivery ids
    P dl:done  /  P dl:dead                zsets of delivered / dead deliveries by finish time
    P m:<key>  /  P marks                  plugin mark hash / zset by update time (retention)
    P g:<key>                              the gateway's own marks (pauses, alarms): never purged
    P schema                               data version (see `gateway.store.redis_retention`)
    P ev:msg:<message_uuid>                set of event ids (the console's message timeline)
    P src:last  /  P src:recent:<source>   hash source->latest arrival / zset of the last
                                           ~hour's event ids by arrival (trimmed at ingest)
    P dl:ok:<dest>                         zset of the last ~hour's delivered ids by finish time
    P dl:err                               zset of the newest 1000 failed deliveries by time

An event hash's ``dls`` field lists its deliveries' ids: retention keeps the event while one
of them exists. Retention, marks and upgrades: `gateway.store.redis_retention`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from gateway.errors import StoreError
from gateway.ids import new_id
from gateway.store import redis_reads
from gateway.store.base import (
    DELIVERY_STATES,
    EVENT_STATES,
    AttemptRecord,
    DeliveryFilter,
    DeliveryPage,
    DeliveryRecord,
    EventRecord,
    IncomingEvent,
    IngestResult,
    Lease,
    NewDelivery,
    SourceActivity,
    Store,
)
from gateway.store.redis_batch import Batcher
from gateway.store.redis_codec import (
    Persistence,
    attempt_args,
    attempt_record,
    c_packed,
    delivery_record,
    event_record,
    finish_event_args,
    ingest_args,
    num,
    pairs,
    split_url,
)
from gateway.store.redis_retention import SCRIPTS as RETENTION_SCRIPTS
from gateway.store.redis_retention import RedisRetention
from gateway.store.redis_scripts import SCRIPTS

log = logging.getLogger("gateway.store")
BATCH = 500  # ids per script call for bulk operations (replay, purge): keeps Redis responsive
# Scripts whose concurrent calls share one script call (redis_batch).
BATCHED = ("ingest", "finish_event", "finish_attempt", "advance_mark")


class RedisStore(RedisRetention, Store):
    """See the module docstring. Nothing connects before `open`.

    The client decodes replies (``decode_responses=True``), so every reply is ``str``;
    redis-py's annotations say ``bytes | str``, hence the casts on direct commands.
    """

    def __init__(self, url: str, max_connections: int = 64, timeout: float = 10.0) -> None:
        self._url, self.prefix = split_url(url)
        self._max_connections = max_connections
        self._timeout = timeout
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self.batchers: dict[str, Batcher] = {}
        self.persistence: Persistence | None = None

    def __repr__(self) -> str:  # never show the URL: it may hold a password
        return f"RedisStore(prefix={self.prefix!r})"

    @property
    def _r(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError("the Redis store is not open")
        return self._client

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except RedisError as e:
            raise StoreError(f"redis: {type(e).__name__}: {e}") from e
        except OSError as e:  # DNS failures and the like that redis-py does not wrap
            raise StoreError(f"redis: {e}") from e

    async def _run(self, name: str, *args: Any) -> Any:
        script = self._scripts.get(name) if self._client is not None else None
        if script is None:
            raise StoreError("the Redis store is not open")
        with self._mapped():
            return await script(keys=[], args=[self.prefix, *args])

    async def _run_group(self, name: str, flat: list[Any]) -> Any:
        return await self._run(name, *flat)

    async def _batch(self, name: str, args: list[Any]) -> Any:
        """Run one call of a batched script, grouped with the concurrent ones (redis_batch)."""
        batcher = self.batchers.get(name) if self._client is not None else None
        if batcher is None:
            raise StoreError("the Redis store is not open")
        return await batcher.call(args)

    async def open(self) -> None:
        if self._client is not None:
            return
        with self._mapped():
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                decode_responses=True,
                max_connections=self._max_connections,
                timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
                health_check_interval=30,
                # One quick retry when a pooled connection turns out dead (Redis restarted).
                # Not on timeouts: the script may have run, and a retried claim or attempt
                # record would then count twice.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, (RedisConnectionError,)),
            )
            if pool.connection_kwargs.get("encoding", "utf-8").lower() in ("utf-8", "utf8"):
                pool.connection_class = c_packed(pool.connection_class)
            client = aioredis.Redis.from_pool(pool)
            try:
                await client.ping()
                self.persistence = await self._read_persistence(client)
            except BaseException:
                await client.aclose()
                raise
        self._client = client
        scripts = {**SCRIPTS, **RETENTION_SCRIPTS}
        self._scripts = {name: client.register_script(src) for name, src in scripts.items()}
        self.batchers = {
            name: Batcher(name, functools.partial(self._run_group, name)) for name in BATCHED
        }
        try:
            await self.upgrade()
        except BaseException:
            await self.close()
            raise
        if risk := self.persistence.risk:
            log.warning("redis store: acknowledged events can be lost: %s", risk)

    @staticmethod
    async def _read_persistence(client: aioredis.Redis) -> Persistence:
        try:
            found = {}
            for name in ("appendonly", "appendfsync", "save"):
                found.update(await client.config_get(name))
        except ResponseError as e:  # CONFIG renamed away, or not allowed by an ACL
            return Persistence(error=str(e))
        return Persistence(found.get("appendonly"), found.get("appendfsync"), found.get("save"))

    async def close(self) -> None:
        for batcher in self.batchers.values():  # answer what is queued before letting go
            await batcher.wait_idle()
        client, self._client, self._scripts, self.batchers = self._client, None, {}, {}
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def ping(self) -> None:
        with self._mapped():  # a write: a read-only replica or a MISCONF server fails here
            await self._r.set(self.prefix + "ping", "1", ex=60)

    # -- intake -----------------------------------------------------------------------------
    async def ingest(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None = None
    ) -> IngestResult:
        if not items:
            self._r  # noqa: B018 - a closed store still refuses
            return IngestResult()
        ids = [new_id("evt", now) for _ in items]
        flags = await self._batch("ingest", ingest_args(source, items, ids, now, lease))
        outcomes = tuple(
            "duplicate" if f == "0" else "quarantined" if it.problems else "accepted"
            for it, f in zip(items, flags, strict=True)  # flags: a '1' or '0' per item
        )
        return IngestResult(
            outcomes.count("accepted"),
            outcomes.count("duplicate"),
            outcomes.count("quarantined"),
            tuple(i for i, o in zip(ids, outcomes, strict=True) if o != "duplicate"),
            outcomes,
        )

    # -- router ------------------------------------------------------------------------------
    async def claim_events(
        self, owner: str, limit: int, lease: float, now: float
    ) -> list[EventRecord]:
        rows = await self._run("claim_events", owner, num(now), num(now + lease), limit)
        return sorted((event_record(pairs(r)) for r in rows), key=lambda e: e.id)

    async def finish_event(
        self,
        event_id: str,
        state: str,
        deliveries: list[NewDelivery],
        now: float,
        reason: str | None = None,
    ) -> None:
        await self._batch(
            "finish_event", finish_event_args(event_id, state, deliveries, now, reason)
        )

    async def hold_event(self, event_id: str, reason: str, retry_at: float, now: float) -> None:
        await self._run("hold_event", event_id, reason, num(retry_at), num(now))

    async def quarantine_event(self, event_id: str, reason: str, now: float) -> None:
        await self._run("quarantine_event", event_id, reason, num(now))

    async def has_due_events(self, now: float) -> float | None:
        with self._mapped():
            first = cast(
                "list[tuple[str, float]]",
                await self._r.zrange(self.prefix + "ev:due", 0, 0, withscores=True),
            )
        return first[0][1] if first else None

    # -- delivery ----------------------------------------------------------------------------
    async def claim_deliveries(
        self, owner: str, destination: str, limit: int, lease: float, now: float
    ) -> list[DeliveryRecord]:
        rows = await self._run(
            "claim_deliveries", owner, destination, num(now), num(now + lease), limit
        )
        records = [delivery_record(pairs(r)) for r in rows]
        return sorted(records, key=lambda d: (d.next_attempt_at, d.id))

    async def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        state: str,
        next_attempt_at: float | None,
        counts: bool,
        now: float,
    ) -> None:
        await self._batch(
            "finish_attempt",
            attempt_args(delivery_id, attempt, state, next_attempt_at, counts, now),
        )

    async def release(self, delivery_ids: list[str], now: float) -> None:
        for i in range(0, len(delivery_ids), BATCH):
            await self._run("release", num(now), *delivery_ids[i : i + BATCH])

    async def next_due(self, destination: str | None = None) -> float | None:
        p = self.prefix
        with self._mapped():
            if destination is not None:
                dests = [destination]
            else:
                dests = sorted(cast("set[str]", await self._r.smembers(p + "dl:dests")))
            async with self._r.pipeline(transaction=False) as pipe:
                for d in dests:
                    pipe.zrange(p + "dl:due:" + d, 0, 0, withscores=True)
                firsts = await pipe.execute()
        times = [f[0][1] for f in firsts if f]
        return min(times) if times else None

    # -- inspection and repair -----------------------------------------------------------------
    async def _fetch(self, ids: list[str]) -> list[DeliveryRecord]:
        out: list[DeliveryRecord] = []
        for i in range(0, len(ids), BATCH):
            rows = await self._run("fetch_deliveries", *ids[i : i + BATCH])
            out += [delivery_record(pairs(r)) for r in rows]
        return out

    async def _select(self, flt: DeliveryFilter, limit: int | None) -> list[DeliveryRecord]:
        """Deliveries matching `flt` in (created_at, id) order, read through the narrowest
        index: a message's set, or the zset of its state and/or destination."""
        p = self.prefix
        with self._mapped():
            if flt.message_uuid is not None:
                ids = sorted(
                    cast("set[str]", await self._r.smembers(p + "dl:msg:" + flt.message_uuid))
                )
            else:
                if flt.state and flt.destination:
                    key = f"{p}dl:sd:{flt.state}:{flt.destination}"
                elif flt.state:
                    key = f"{p}dl:state:{flt.state}"
                elif flt.destination:
                    key = f"{p}dl:dest:{flt.destination}"
                else:
                    key = f"{p}dl:all"
                low = "-inf" if flt.since is None else num(flt.since)
                ids = cast(
                    "list[str]",
                    await self._r.zrangebyscore(
                        key, low, "+inf", start=None if limit is None else 0, num=limit
                    ),
                )
        records = [
            d
            for d in await self._fetch(ids)
            if (flt.state is None or d.state == flt.state)
            and (flt.destination is None or d.destination == flt.destination)
            and (flt.message_uuid is None or d.message_uuid == flt.message_uuid)
            and (flt.since is None or d.created_at >= flt.since)
        ]
        records.sort(key=lambda d: (d.created_at, d.id))
        return records if limit is None else records[:limit]

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        return await self._select(flt, flt.limit)

    async def get_delivery(
        self, delivery_id: str
    ) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
        found = await self._fetch([delivery_id])
        if not found:
            return None
        with self._mapped():
            texts = cast("list[str]", await self._r.lrange(self.prefix + "a:" + delivery_id, 0, -1))
        return found[0], [attempt_record(n, t) for n, t in enumerate(texts, 1)]

    async def replay_deliveries(
        self, ids: list[str] | None, flt: DeliveryFilter | None, now: float
    ) -> list[str]:
        want = ""
        if ids is None:
            flt = flt or DeliveryFilter()
            want = flt.state or ""
            ids = [d.id for d in await self._select(flt, None) if d.state != "in_flight"]
        replayed: list[str] = []
        for i in range(0, len(ids), BATCH):
            replayed += await self._run("replay_deliveries", num(now), want, *ids[i : i + BATCH])
        return replayed

    async def list_events(self, state: str, limit: int = 1000) -> list[EventRecord]:
        if limit <= 0:
            return []
        with self._mapped():
            ids = cast(
                "list[str]", await self._r.zrange(self.prefix + "ev:state:" + state, 0, limit - 1)
            )
            return [e for e in await self._events(ids) if e is not None]

    async def _events(self, ids: list[str]) -> list[EventRecord | None]:
        async with self._r.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hgetall(self.prefix + "e:" + event_id)
            hashes = await pipe.execute()
        pairs_ = zip(ids, hashes, strict=True)
        return [event_record({**h, "id": i}) if h else None for i, h in pairs_]

    async def get_event(self, event_id: str) -> EventRecord | None:
        with self._mapped():
            return (await self._events([event_id]))[0]

    async def replay_quarantined(self, ids: list[str] | None, now: float) -> list[str]:
        if ids is None:
            return await self._run("replay_quarantined", num(now), "1")
        replayed: list[str] = []
        for i in range(0, len(ids), BATCH):
            replayed += await self._run("replay_quarantined", num(now), "0", *ids[i : i + BATCH])
        return replayed

    # -- the console's reads (gateway.store.redis_reads) --------------------------------------
    async def message_events(self, message_uuid: str, limit: int = 500) -> list[EventRecord]:
        with self._mapped():
            return await redis_reads.message_events(self, message_uuid, limit)

    async def page_deliveries(self, page: DeliveryPage) -> list[DeliveryRecord]:
        with self._mapped():
            return await redis_reads.page_deliveries(self, page)

    async def source_activity(self, sources: list[str], since: float) -> list[SourceActivity]:
        with self._mapped():
            return await redis_reads.source_activity(self, sources, since)

    async def delivered_since(self, destinations: list[str], since: float) -> dict[str, int]:
        with self._mapped():
            return await redis_reads.delivered_since(self, destinations, since)

    async def recent_errors(self, limit: int = 20) -> list[DeliveryRecord]:
        with self._mapped():
            return await redis_reads.recent_errors(self, limit)

    async def queue_stats(self, now: float) -> list[dict[str, Any]]:
        p, states = self.prefix, ("pending", "in_flight", "dead")
        with self._mapped():
            dests = sorted(cast("set[str]", await self._r.smembers(p + "dl:dests")))
            async with self._r.pipeline(transaction=False) as pipe:
                for d in dests:
                    for s in states:
                        pipe.zcard(f"{p}dl:sd:{s}:{d}")
                        pipe.zrange(f"{p}dl:sd:{s}:{d}", 0, 0, withscores=True)
                found = iter(await pipe.execute())
        rows = []
        for d in dests:
            for s in states:
                count, first = next(found), next(found)
                if count:
                    rows.append(
                        {
                            "destination": d,
                            "state": s,
                            "count": count,
                            "oldest": first[0][1] if first else None,
                        }
                    )
        return rows

    async def counts(self) -> dict[str, dict[str, int]]:
        p = self.prefix
        with self._mapped():
            async with self._r.pipeline(transaction=True) as pipe:
                for s in EVENT_STATES:
                    pipe.zcard(p + "ev:state:" + s)
                for s in DELIVERY_STATES:
                    pipe.zcard(p + "dl:state:" + s)
                sizes = await pipe.execute()
        events = dict(zip(EVENT_STATES, sizes[: len(EVENT_STATES)], strict=True))
        deliveries = dict(zip(DELIVERY_STATES, sizes[len(EVENT_STATES) :], strict=True))
        return {
            "events": {s: n for s, n in events.items() if n},
            "deliveries": {s: n for s, n in deliveries.items() if n},
        }
