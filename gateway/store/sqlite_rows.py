"""Rows of the SQLite store: column lists, row -> record conversions, and the statements that
several operations share. Functions of a `sqlite3.Connection`, run on the committer's thread."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.store.base import DeliveryFilter, DeliveryRecord, EventRecord, FinishedEvent

EVENT_COLS = (
    "id, source, received_at, raw, state, message_uuid, event, reason, route_attempts,"
    " next_route_at, recheck"
)
DELIVERY_COLS = (
    "d.id, d.event_id, d.source, d.route, d.destination, d.state, d.attempts, d.next_attempt_at,"
    " d.created_at, d.updated_at, d.first_attempt_at, d.last_error, d.last_status,"
    " d.message_uuid, d.enrichment, e.raw, e.received_at, d.lease_until"
)
# Claim and next_due walk the partial index ``deliveries_due (destination, next_attempt_at)
# WHERE state IN ('pending', 'in_flight')`` in time order, so their cost does not grow with the
# backlog. Repeating the index's WHERE term verbatim is what lets SQLite use a partial index.
QUEUED = "destination = :dest AND state IN ('pending', 'in_flight')"
PENDING_DUE = (
    f"SELECT id FROM deliveries WHERE {QUEUED} AND state = 'pending'"
    " AND next_attempt_at <= :now ORDER BY next_attempt_at LIMIT :limit"
)
EXPIRED = (
    "SELECT id FROM deliveries WHERE state = 'in_flight' AND destination = :dest"
    " AND lease_until < :now LIMIT :limit"
)
FIRST_PENDING = (
    f"SELECT next_attempt_at FROM deliveries WHERE {QUEUED} AND state = 'pending'"
    " ORDER BY next_attempt_at LIMIT 1"
)


def event_row(row: tuple[Any, ...]) -> EventRecord:
    """An `EventRecord` from a row of `EVENT_COLS` (``recheck`` is stored as 0/1)."""
    values = list(row)
    values[-1] = bool(values[-1])
    return EventRecord(*values)


def delivery_row(row: tuple[Any, ...]) -> DeliveryRecord:
    """A `DeliveryRecord` from a row of `DELIVERY_COLS` (``enrichment`` is stored as JSON)."""
    values = list(row)
    values[14] = json.loads(values[14] or "{}")
    return DeliveryRecord(*values)


def finish_event(c: sqlite3.Connection, f: FinishedEvent) -> None:
    """Set a ``received`` event's verdict and insert its deliveries (see `Store.finish_event`)."""
    row = c.execute(
        "UPDATE events SET state = ?, reason = ?, lease_until = NULL, leased_by = NULL,"
        " recheck = 0, updated_at = ? WHERE id = ? AND state = 'received'"
        " RETURNING source, message_uuid",
        (f.state, f.reason, f.now, f.event_id),
    ).fetchone()
    if row is None:
        return  # already finished by another worker whose lease we outlived
    c.executemany(
        "INSERT INTO deliveries (id, event_id, source, route, destination, state,"
        " next_attempt_at, created_at, updated_at, message_uuid, enrichment)"
        " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [
            (
                d.id,
                d.event_id,
                row[0],
                d.route,
                d.destination,
                d.next_attempt_at,
                f.now,
                f.now,
                row[1],
                json.dumps(d.enrichment, separators=(",", ":")),
            )
            for d in f.deliveries
        ],
    )


def delivery_where(flt: DeliveryFilter) -> tuple[str, list[Any]]:
    """The WHERE clause (on ``deliveries d``) and its arguments for `flt`."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("d.state", flt.state),
        ("d.destination", flt.destination),
        ("d.message_uuid", flt.message_uuid),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if flt.since is not None:
        clauses.append("d.created_at >= ?")
        args.append(flt.since)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


# -- marks ---------------------------------------------------------------------------------
#: The table of each mark scope (`gateway.store.base.MARK_SCOPES`).
MARK_TABLES = {"plugin": "marks", "gateway": "gateway_marks"}


def mark_table(scope: str) -> str:
    try:
        return MARK_TABLES[scope]
    except KeyError:
        raise ValueError(f"unknown mark scope {scope!r}") from None


def advance_mark(
    c: sqlite3.Connection, table: str, key: str, rank: str, value: str, now: float
) -> tuple[bool, str | None]:
    row = c.execute(f"SELECT rank, value FROM {table} WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0] >= rank:
        return False, row[1]
    put_mark(c, table, key, rank, value, now)
    return True, row[1] if row else None


def put_mark(
    c: sqlite3.Connection, table: str, key: str, rank: str, value: str, now: float
) -> None:
    c.execute(
        f"INSERT INTO {table} (key, rank, value, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET rank = excluded.rank, value = excluded.value,"
        " updated_at = excluded.updated_at",
        (key, rank, value, now),
    )


class Runs:
    """What the SQLite store's mixins (`gateway.store.sqlite_inspect`,
    `gateway.store.sqlite_retention`) need from `gateway.store.sqlite.SQLiteStore`."""

    path: Path
    busy_timeout: float

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` in the next group commit; return its result once committed."""
        raise NotImplementedError

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` in a read transaction."""
        raise NotImplementedError
