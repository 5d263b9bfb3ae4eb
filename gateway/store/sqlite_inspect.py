"""Inspection and repair for the SQLite store (listing, replay, queue statistics): the queries
behind ``deliveries``, ``replay``, ``quarantine`` and the metrics gauges. A mixin of
`gateway.store.sqlite.SQLiteStore`, which provides `_read` and `_write`."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.store.base import AttemptRecord, DeliveryFilter, DeliveryRecord, EventRecord
from gateway.store.sqlite_rows import (
    DELIVERY_COLS,
    EVENT_COLS,
    Runs,
    delivery_row,
    delivery_where,
    event_row,
)


class SQLiteInspection(Runs):
    """`Store`'s inspection and repair methods on SQLite."""

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        where, args = delivery_where(flt)
        return await self._read(
            lambda c: [
                delivery_row(r)
                for r in c.execute(
                    f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
                    f" {where} ORDER BY d.created_at, d.id LIMIT ?",
                    (*args, flt.limit),
                ).fetchall()
            ]
        )

    async def get_delivery(
        self, delivery_id: str
    ) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
        def op(c: sqlite3.Connection) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
            row = c.execute(
                f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            attempts = [
                AttemptRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}"))
                for r in c.execute(
                    "SELECT started_at, finished_at, outcome, status, error, number, details"
                    " FROM attempts WHERE delivery_id = ? ORDER BY number",
                    (delivery_id,),
                )
            ]
            return delivery_row(row), attempts

        return await self._read(op)

    async def replay_deliveries(
        self, ids: list[str] | None, flt: DeliveryFilter | None, now: float
    ) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            if ids is not None:
                marks = ",".join("?" * len(ids))
                where, args = f"WHERE d.id IN ({marks}) AND d.state != 'in_flight'", list(ids)
            else:
                where, args = delivery_where(flt or DeliveryFilter())
                # A delivery in flight belongs to its worker; resetting it would send it twice.
                where = (where + " AND" if where else "WHERE") + " d.state != 'in_flight'"
            targets = [
                r[0] for r in c.execute(f"SELECT d.id FROM deliveries d {where}", args).fetchall()
            ]
            c.executemany(
                "UPDATE deliveries SET state = 'pending', attempts = 0, first_attempt_at = NULL,"
                " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                [(now, now, i) for i in targets],
            )
            return targets

        return await self._write(op)

    async def list_events(self, state: str, limit: int = 1000) -> list[EventRecord]:
        return await self._read(
            lambda c: [
                event_row(r)
                for r in c.execute(
                    f"SELECT {EVENT_COLS} FROM events WHERE state = ? ORDER BY id LIMIT ?",
                    (state, limit),
                ).fetchall()
            ]
        )

    async def get_event(self, event_id: str) -> EventRecord | None:
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {EVENT_COLS} FROM events WHERE id = ?", (event_id,)
            ).fetchone()
        )
        return event_row(row) if row else None

    async def replay_quarantined(self, ids: list[str] | None, now: float) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            sql = "SELECT id FROM events WHERE state = 'quarantined'"
            args: list[Any] = []
            if ids is not None:
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                args = list(ids)
            targets = [r[0] for r in c.execute(sql, args).fetchall()]
            c.executemany(
                "UPDATE events SET state = 'received', recheck = 1, next_route_at = ?,"
                " updated_at = ? WHERE id = ?",
                [(now, now, i) for i in targets],
            )
            return targets

        return await self._write(op)

    async def queue_stats(self, now: float) -> list[dict[str, Any]]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT destination, state, COUNT(*), MIN(created_at) FROM deliveries"
                " WHERE state IN ('pending', 'in_flight', 'dead') GROUP BY destination, state"
            ).fetchall()
        )
        return [{"destination": r[0], "state": r[1], "count": r[2], "oldest": r[3]} for r in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        def op(c: sqlite3.Connection) -> dict[str, dict[str, int]]:
            return {
                "events": dict(c.execute("SELECT state, COUNT(*) FROM events GROUP BY state")),
                "deliveries": dict(
                    c.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
                ),
            }

        return await self._read(op)

    async def count_events(self, state: str) -> int:
        row = await self._read(
            lambda c: c.execute("SELECT COUNT(*) FROM events WHERE state = ?", (state,)).fetchone()
        )
        return int(row[0])
