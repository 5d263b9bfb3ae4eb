"""The PostgreSQL store's reads for the web console (`Store.message_events`,
`page_deliveries`, `source_activity`, `delivered_since`, `recent_errors`).

Each is one statement along an index, so a page costs the same on a store of millions as on
an empty one: ``events_message``; ``deliveries_created (created_at, id)`` walked backwards
from the keyset (or ``deliveries_state`` when a state and destination are given);
``events_source (source, received_at)``; the partial ``deliveries_delivered (destination,
updated_at)``; the partial ``deliveries_failed (updated_at)``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.store.base import DeliveryPage, DeliveryRecord, EventRecord, SourceActivity
from gateway.store.postgres_sql import DELIVERY_COLS, EVENT_COLS, delivery_record, event_record

Conn = psycopg.AsyncConnection[Any]


async def message_events(c: Conn, message_uuid: str, limit: int) -> list[EventRecord]:
    cur = await c.execute(
        f"SELECT {EVENT_COLS} FROM events WHERE message_uuid = %s"
        " ORDER BY received_at, id LIMIT %s",
        (message_uuid, limit),
    )
    return [event_record(r) for r in await cur.fetchall()]


async def page_deliveries(c: Conn, page: DeliveryPage) -> list[DeliveryRecord]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (("d.state", page.state), ("d.destination", page.destination)):
        if value is not None:
            clauses.append(f"{column} = %s")
            args.append(value)
    if page.since is not None:
        clauses.append("d.created_at >= %s")
        args.append(page.since)
    if page.until is not None:
        clauses.append("d.created_at < %s")
        args.append(page.until)
    if page.before is not None:
        clauses.append("(d.created_at, d.id) < (%s, %s)")
        args += list(page.before)
    where = "WHERE " + " AND ".join(clauses) if clauses else ""
    cur = await c.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id {where}"
        " ORDER BY d.created_at DESC, d.id DESC LIMIT %s",
        (*args, max(0, page.limit)),
    )
    return [delivery_record(r) for r in await cur.fetchall()]


async def source_activity(c: Conn, sources: list[str], since: float) -> list[SourceActivity]:
    cur = await c.execute(
        "SELECT s.name,"
        " (SELECT MAX(received_at) FROM events WHERE source = s.name),"
        " (SELECT COUNT(*) FROM events WHERE source = s.name AND received_at >= %s),"
        " (SELECT COUNT(*) FROM events WHERE source = s.name AND state = 'quarantined')"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS s(name, n) ORDER BY s.n",
        (since, sources),
    )
    return [SourceActivity(r[0], r[1], int(r[2]), int(r[3])) for r in await cur.fetchall()]


async def delivered_since(c: Conn, destinations: list[str], since: float) -> dict[str, int]:
    cur = await c.execute(
        "SELECT d.name, (SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'"
        " AND destination = d.name AND updated_at >= %s)"
        " FROM unnest(%s::text[]) AS d(name)",
        (since, destinations),
    )
    return {r[0]: int(r[1]) for r in await cur.fetchall()}


async def recent_errors(c: Conn, limit: int) -> list[DeliveryRecord]:
    cur = await c.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.last_error IS NOT NULL AND d.state != 'delivered'"
        " ORDER BY d.updated_at DESC, d.id DESC LIMIT %s",
        (limit,),
    )
    return [delivery_record(r) for r in await cur.fetchall()]
