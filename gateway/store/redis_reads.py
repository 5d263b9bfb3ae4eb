"""The Redis store's reads for the web console (`Store.message_events`, `page_deliveries`,
`source_activity`, `delivered_since`, `recent_errors`).

They read the sets the scripts keep for them (see the key layout in `gateway.store.redis`):
``ev:msg:<uuid>`` (a message's events), the delivery listing zsets scored by ``created_at``
(``dl:all``, ``dl:state:<s>``, ``dl:dest:<d>``, ``dl:sd:<s>:<d>``; members with one score sort
by id, so a reverse range is exactly newest first by ``(created_at, id)``), ``src:last`` and
``src:recent:<source>`` (arrivals), ``dl:ok:<dest>`` (delivered lately) and ``dl:err``
(the latest failures). Callers map Redis errors (`RedisStore._mapped`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from gateway.store.base import DeliveryPage, DeliveryRecord, EventRecord, SourceActivity
from gateway.store.redis_codec import num

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore

#: Ids read per round trip while walking a listing zset.
CHUNK = 200


async def message_events(store: RedisStore, message_uuid: str, limit: int) -> list[EventRecord]:
    ids = sorted(cast("set[str]", await store._r.smembers(store.prefix + "ev:msg:" + message_uuid)))
    events = [e for e in await store._events(ids) if e is not None]
    events.sort(key=lambda e: (e.received_at, e.id))
    return events[: max(0, limit)]


def _listing_key(store: RedisStore, page: DeliveryPage) -> str:
    p = store.prefix
    if page.state and page.destination:
        return f"{p}dl:sd:{page.state}:{page.destination}"
    if page.state:
        return f"{p}dl:state:{page.state}"
    if page.destination:
        return f"{p}dl:dest:{page.destination}"
    return f"{p}dl:all"


async def page_deliveries(store: RedisStore, page: DeliveryPage) -> list[DeliveryRecord]:
    if page.limit <= 0:
        return []
    key = _listing_key(store, page)
    high = "+inf" if page.until is None else "(" + num(page.until)
    if page.before is not None and (page.until is None or page.before[0] < page.until):
        high = num(page.before[0])
    low = "-inf" if page.since is None else num(page.since)
    ids: list[str] = []
    offset = 0
    while len(ids) < page.limit:
        found = cast(
            "list[tuple[str, float]]",
            await store._r.zrevrangebyscore(
                key, high, low, start=offset, num=CHUNK, withscores=True
            ),
        )
        for member, score in found:
            if page.before is not None and (score, member) >= page.before:
                continue  # a tie on created_at at or after the cursor's id
            ids.append(member)
        if len(found) < CHUNK:
            break
        offset += CHUNK
    ids = ids[: page.limit]
    records = {d.id: d for d in await store._fetch(ids)}
    return [records[i] for i in ids if i in records]


async def source_activity(
    store: RedisStore, sources: list[str], since: float
) -> list[SourceActivity]:
    p, r = store.prefix, store._r
    quarantined: dict[str, int] = {}
    ids = cast("list[str]", await r.zrange(p + "ev:state:quarantined", 0, -1))
    for start in range(0, len(ids), CHUNK):
        async with r.pipeline(transaction=False) as pipe:
            for event_id in ids[start : start + CHUNK]:
                pipe.hget(p + "e:" + event_id, "source")
            for source in await pipe.execute():
                if source is not None:
                    quarantined[source] = quarantined.get(source, 0) + 1
    if not sources:
        return []
    lasts = cast("list[str | None]", await r.hmget(p + "src:last", sources))
    async with r.pipeline(transaction=False) as pipe:
        for source in sources:
            pipe.zcount(p + "src:recent:" + source, num(since), "+inf")
        counts = await pipe.execute()
    return [
        SourceActivity(s, None if last is None else float(last), int(n), quarantined.get(s, 0))
        for s, last, n in zip(sources, lasts, counts, strict=True)
    ]


async def delivered_since(
    store: RedisStore, destinations: list[str], since: float
) -> dict[str, int]:
    async with store._r.pipeline(transaction=False) as pipe:
        for d in destinations:
            pipe.zcount(store.prefix + "dl:ok:" + d, num(since), "+inf")
        counts = await pipe.execute()
    return {d: int(n) for d, n in zip(destinations, counts, strict=True)}


async def recent_errors(store: RedisStore, limit: int) -> list[DeliveryRecord]:
    if limit <= 0:
        return []
    ids = cast("list[str]", await store._r.zrevrange(store.prefix + "dl:err", 0, 2 * limit - 1))
    records = {d.id: d for d in await store._fetch(ids)}
    out = [
        records[i]
        for i in ids
        if i in records and records[i].last_error and records[i].state != "delivered"
    ]
    return out[:limit]
