"""The SQLite store's reads for the web console (`Store.message_events`, `page_deliveries`,
`source_activity`, `delivered_since`, `recent_errors`): functions of one connection, run on the
committer's reader like every other read.

Every statement walks an index range bounded by the page size or by the time window, so a
page costs the same on a store of a million events as on an empty one:

- deliveries are paged per (state, destination) pair along ``deliveries_listing (state,
  destination, created_at, id)`` and merged here; the destinations present in a state are found by
  a loose index scan (one index probe per destination), not by a scan of the table;
- per-source figures use ``events_source (source, received_at)``;
- delivered lately uses the partial ``deliveries_delivered (destination, updated_at)``;
- the latest failures use the partial ``deliveries_failed (updated_at)``;
- queue figures count at most `cap` index entries per (state, destination), where a GROUP BY
  over a large backlog would read every queued row.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.store.base import (
    DELIVERY_STATES,
    DeliveryPage,
    DeliveryRecord,
    EventRecord,
    SourceActivity,
)
from gateway.store.sqlite_rows import DELIVERY_COLS, EVENT_COLS, delivery_row, event_row


def message_events(c: sqlite3.Connection, message_uuid: str, limit: int) -> list[EventRecord]:
    rows = c.execute(
        f"SELECT {EVENT_COLS} FROM events WHERE message_uuid = ? ORDER BY received_at, id LIMIT ?",
        (message_uuid, limit),
    ).fetchall()
    return [event_row(r) for r in rows]


def _destinations(c: sqlite3.Connection, state: str) -> list[str]:
    """Destinations with deliveries in `state`: a loose scan of ``deliveries_listing``."""
    rows = c.execute(
        "WITH RECURSIVE d(x) AS ("
        " SELECT MIN(destination) FROM deliveries WHERE state = :s"
        " UNION ALL SELECT (SELECT MIN(destination) FROM deliveries"
        "  WHERE state = :s AND destination > d.x) FROM d WHERE d.x IS NOT NULL)"
        " SELECT x FROM d WHERE x IS NOT NULL",
        {"s": state},
    ).fetchall()
    return [r[0] for r in rows]


def page_deliveries(c: sqlite3.Connection, page: DeliveryPage) -> list[DeliveryRecord]:
    states = [page.state] if page.state else list(DELIVERY_STATES)
    clauses = ["state = :state", "destination = :dest"]
    args: dict[str, Any] = {"limit": max(0, page.limit)}
    if page.since is not None:
        clauses.append("created_at >= :since")
        args["since"] = page.since
    if page.until is not None:
        clauses.append("created_at < :until")
        args["until"] = page.until
    if page.before is not None:
        # Expanded row-value comparison, so the index range is bounded by created_at.
        clauses.append("created_at <= :bc AND (created_at < :bc OR id < :bi)")
        args["bc"], args["bi"] = page.before
    sql = (
        f"SELECT created_at, id FROM deliveries WHERE {' AND '.join(clauses)}"
        " ORDER BY created_at DESC, id DESC LIMIT :limit"
    )
    keys: list[tuple[float, str]] = []
    for state in states:
        dests = [page.destination] if page.destination else _destinations(c, state)
        for dest in dests:
            keys += c.execute(sql, {**args, "state": state, "dest": dest}).fetchall()
    keys.sort(reverse=True)
    ids = [k[1] for k in keys[: page.limit]]
    if not ids:
        return []
    rows = c.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
        f" WHERE d.id IN ({','.join('?' * len(ids))})",
        ids,
    ).fetchall()
    by_id = {r[0]: delivery_row(r) for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def source_activity(
    c: sqlite3.Connection, sources: list[str], since: float
) -> list[SourceActivity]:
    quarantined = dict(
        c.execute(
            "SELECT source, COUNT(*) FROM events WHERE state = 'quarantined' GROUP BY source"
        ).fetchall()
    )
    out = []
    for source in sources:
        last, received = c.execute(
            "SELECT (SELECT MAX(received_at) FROM events WHERE source = :s),"
            " (SELECT COUNT(*) FROM events WHERE source = :s AND received_at >= :since)",
            {"s": source, "since": since},
        ).fetchone()
        out.append(SourceActivity(source, last, received, quarantined.get(source, 0)))
    return out


def delivered_since(c: sqlite3.Connection, destinations: list[str], since: float) -> dict[str, int]:
    return {
        d: c.execute(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered' AND destination = ?"
            " AND updated_at >= ?",
            (d, since),
        ).fetchone()[0]
        for d in destinations
    }


def recent_errors(c: sqlite3.Connection, limit: int) -> list[DeliveryRecord]:
    rows = c.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.last_error IS NOT NULL AND d.state != 'delivered'"
        " ORDER BY d.updated_at DESC, d.id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [delivery_row(r) for r in rows]


def queue_figures(c: sqlite3.Connection, cap: int) -> list[dict[str, Any]]:
    rows = []
    for state in ("pending", "in_flight", "dead"):
        for dest in _destinations(c, state):
            count, oldest = c.execute(
                "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE state = :s"
                "  AND destination = :d LIMIT :cap)),"
                " (SELECT MIN(created_at) FROM deliveries WHERE state = :s AND destination = :d)",
                {"s": state, "d": dest, "cap": cap + 1},
            ).fetchone()
            if count:
                rows.append(
                    {
                        "destination": dest,
                        "state": state,
                        "count": min(count, cap),
                        "oldest": oldest,
                        "capped": count > cap,
                    }
                )
    return rows
