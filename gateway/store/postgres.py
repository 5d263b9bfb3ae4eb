"""PostgreSQL store: several gateway instances share one database, durably.

``store: postgresql://user:password@host:5432/dbname`` (or ``postgres://``). Query parameters
are libpq's (``sslmode``, ``sslrootcert``, ``connect_timeout``, ``options``,
``target_session_attrs``, ``application_name``...) and pass through untouched, except
``pool_size`` (connections per process, default 10). Driver: psycopg 3, async.

Same semantics as the SQLite store, with PostgreSQL's means:

- The schema is created and migrated by `open` (`postgres_schema.migrate`, under an advisory
  lock, versions in ``cg_schema_version``).
- An acknowledgement follows COMMIT with ``synchronous_commit`` on (forced on if the server
  says ``off``). Concurrent ingests share one transaction (`postgres_ingest`), and so do the
  outcomes of delivery tries that finish together (`postgres_attempts`); dedupe is the
  primary key of ``dedupe`` with ``INSERT .. ON CONFLICT DO NOTHING``, atomic across instances.
- Work is claimed with ``SELECT .. FOR UPDATE SKIP LOCKED`` inside the claiming ``UPDATE`` and
  held under a lease (``lease_until``), so instances never wait on each other's claims and a
  dead instance's work is claimed by the others once its lease has run out.
- Work that other instances should look at (events committed without a lease, new or released
  or replayed deliveries) is announced with ``NOTIFY callback_gateway`` in the transaction
  that creates it; `watch` delivers those announcements, so idle instances wake instead of
  polling often.
- When PostgreSQL is unreachable every call raises `StoreError` at once (intake answers 503,
  ``/readyz`` 503, delivery and routing retry); the next call after it is back reconnects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from gateway.errors import ConfigError, StoreError
from gateway.store import postgres_reads, postgres_schema
from gateway.store.base import (
    AttemptRecord,
    DeliveryFilter,
    DeliveryPage,
    DeliveryRecord,
    EventRecord,
    FinishedEvent,
    IncomingEvent,
    IngestResult,
    Lease,
    NewDelivery,
    SourceActivity,
    Store,
)
from gateway.store.postgres_attempts import AttemptGroups
from gateway.store.postgres_conn import CHANNEL, Listener, Pool, split_url
from gateway.store.postgres_ingest import IngestGroups
from gateway.store.postgres_owners import OwnerSession
from gateway.store.postgres_retention import PostgresRetention
from gateway.store.postgres_sql import (
    CLAIM_DELIVERIES,
    CLAIM_EVENTS,
    DELIVERY_COLS,
    EVENT_COLS,
    FINISH_EVENTS,
    NEXT_DUE,
    delivery_record,
    delivery_where,
    event_record,
    finish_arrays,
)

Conn = psycopg.AsyncConnection[Any]


class PostgresStore(PostgresRetention, Store):
    """See the module docstring. Nothing connects before `open`."""

    def __init__(self, url: str) -> None:
        self._conninfo, params = split_url(url)
        size = params.get("pool_size", "10")
        if not size.isdigit() or int(size) < 1:
            raise ConfigError([f"store: pool_size must be a whole number >= 1, not {size!r}"])
        self._pool_size = int(size)
        self._pool: Pool | None = None
        self._ingest: IngestGroups | None = None
        self._attempts: AttemptGroups | None = None
        self._owners: OwnerSession | None = None
        self._listener: Listener | None = None
        self._watchers: list[Callable[[str, str | None], None]] = []
        #: Prefixes this store's notifications, so it can ignore its own.
        self.token = uuid.uuid4().hex[:12]

    def __repr__(self) -> str:  # never show the URL: it may hold a password
        return "PostgresStore()"

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open")
        return self._pool

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = Pool(self._conninfo, self._pool_size)
        try:
            await pool.run(postgres_schema.migrate)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._ingest = IngestGroups(pool, self.token)
        self._ingest.start()
        self._attempts = AttemptGroups(pool)
        self._attempts.start()

    async def close(self) -> None:
        if self._ingest is not None:
            await self._ingest.stop()
        if self._attempts is not None:
            await self._attempts.stop()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._owners is not None:
            await self._owners.release()
            self._owners = None
        if self._pool is not None:
            await self._pool.close()

    async def adopt_owner(self, owner: str, now: float) -> int:
        """See `Store.adopt_owner`: the proof is a session advisory lock per registered owner
        (`gateway.store.postgres_owners`)."""
        session = OwnerSession(self._conninfo)
        self._owners = session
        own = await session.hold(owner)
        registered = await session.registered()
        leased = {
            r[0]
            for r in await self._rows(
                "SELECT DISTINCT leased_by FROM events WHERE state = 'received'"
                " AND leased_by IS NOT NULL UNION SELECT DISTINCT leased_by FROM deliveries"
                " WHERE state = 'in_flight' AND leased_by IS NOT NULL"
            )
        }
        freed = 0
        for dead in sorted(leased & registered):
            if dead == owner:
                if not own:
                    continue  # another live process has this id: its leases are its own
            elif not await session.take_if_dead(dead):
                continue

            async def op(c: Conn, dead: str = dead) -> int:
                events = await c.execute(
                    "UPDATE events SET lease_until = NULL, leased_by = NULL"
                    " WHERE state = 'received' AND leased_by = %s",
                    (dead,),
                )
                deliveries = await c.execute(  # expired now: claimed again as after the lease
                    "UPDATE deliveries SET lease_until = 0"
                    " WHERE state = 'in_flight' AND leased_by = %s RETURNING destination",
                    (dead,),
                )
                await self._notify(c, [r[0] for r in await deliveries.fetchall()])
                return int(events.rowcount) + int(deliveries.rowcount)

            freed += await self.pool.run(op, transaction=True)
            if dead != owner:
                await session.forget(dead)
        return freed

    async def ping(self) -> None:
        await self.pool.run(lambda c: c.execute("SELECT 1"))

    # -- notifications -----------------------------------------------------------------------
    def watch(self, on_work: Callable[[str, str | None], None]) -> bool:
        # The LISTEN connection is opened for the first watcher only: CLI commands need none.
        self._watchers.append(on_work)
        if self._listener is None and self._pool is not None:
            self._listener = Listener(self._conninfo, self._notified)
            self._listener.start()
        return True

    def _notified(self, payload: str | None) -> None:
        kinds: list[tuple[str, str | None]] = [("events", None), ("deliveries", None)]
        if payload is not None:  # (None: reconnected, something may have been missed)
            token, _, rest = payload.partition(" ")
            if token == self.token:
                return
            kind, _, name = rest.partition(" ")
            kinds = [("events", None)] if kind == "e" else [("deliveries", name or None)]
        for on_work in self._watchers:
            for what, destination in kinds:
                on_work(what, destination)

    async def _notify(self, c: Conn, destinations: list[str]) -> None:
        payloads = [f"{self.token} d {d}" for d in sorted(set(destinations))]
        if payloads:
            await c.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads)
            )

    # -- intake -----------------------------------------------------------------------------
    async def ingest(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None = None
    ) -> IngestResult:
        if self._ingest is None:
            raise StoreError("the PostgreSQL store is not open")
        if not items:
            return IngestResult()
        return await self._ingest.submit(source, items, now, lease)

    # -- router ------------------------------------------------------------------------------
    async def claim_events(
        self, owner: str, limit: int, lease: float, now: float
    ) -> list[EventRecord]:
        async def op(c: Conn) -> list[EventRecord]:
            cur = await c.execute(
                CLAIM_EVENTS, {"until": now + lease, "owner": owner, "now": now, "limit": limit}
            )
            return sorted((event_record(r) for r in await cur.fetchall()), key=lambda e: e.id)

        return await self.pool.run(op)

    async def finish_event(
        self,
        event_id: str,
        state: str,
        deliveries: list[NewDelivery],
        now: float,
        reason: str | None = None,
    ) -> None:
        await self.finish_events([FinishedEvent(event_id, state, deliveries, now, reason)])

    async def finish_events(self, finished: list[FinishedEvent]) -> None:
        if not finished:
            return

        args = [*finish_arrays(finished), CHANNEL, f"{self.token} d "]
        # One statement, its own transaction: one round trip instead of four.
        await self.pool.run(lambda c: c.execute(FINISH_EVENTS, args))

    async def hold_event(self, event_id: str, reason: str, retry_at: float, now: float) -> None:
        await self.pool.run(
            lambda c: c.execute(
                "UPDATE events SET reason = %s, next_route_at = %s,"
                " route_attempts = route_attempts + 1, lease_until = NULL, leased_by = NULL,"
                " updated_at = %s WHERE id = %s",
                (reason, retry_at, now, event_id),
            ),
            transaction=True,  # counts a try: not safe to repeat
        )

    async def quarantine_event(self, event_id: str, reason: str, now: float) -> None:
        await self.pool.run(
            lambda c: c.execute(
                "UPDATE events SET state = 'quarantined', reason = %s, lease_until = NULL,"
                " leased_by = NULL, recheck = false, updated_at = %s WHERE id = %s",
                (reason, now, event_id),
            )
        )

    async def has_due_events(self, now: float) -> float | None:
        return await self._scalar(
            "SELECT MIN(GREATEST(next_route_at, COALESCE(lease_until, 0))) FROM events"
            " WHERE state = 'received'"
        )

    # -- delivery ----------------------------------------------------------------------------
    async def claim_deliveries(
        self, owner: str, destination: str, limit: int, lease: float, now: float
    ) -> list[DeliveryRecord]:
        args = {
            "until": now + lease,
            "owner": owner,
            "now": now,
            "dest": destination,
            "limit": limit,
        }

        async def op(c: Conn) -> list[DeliveryRecord]:
            cur = await c.execute(CLAIM_DELIVERIES, args)
            rows = [delivery_record(r) for r in await cur.fetchall()]
            return sorted(rows, key=lambda d: (d.next_attempt_at, d.id))

        return await self.pool.run(op)

    async def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        state: str,
        next_attempt_at: float | None,
        counts: bool,
        now: float,
    ) -> None:
        args = {
            "id": delivery_id,
            "started": attempt.started_at,
            "finished": attempt.finished_at,
            "outcome": attempt.outcome,
            "status": attempt.status,
            "error": attempt.error,
            "details": json.dumps(attempt.details) if attempt.details else None,
            "state": state,
            "next": next_attempt_at,
            "counts": 1 if counts else 0,
            "now": now,
        }
        if self._attempts is None:
            raise StoreError("the PostgreSQL store is not open")
        # Grouped with the other tries finishing now, in one transaction (`postgres_attempts`).
        await self._attempts.submit(args)

    async def release(self, delivery_ids: list[str], now: float) -> None:
        if not delivery_ids:
            return

        async def op(c: Conn) -> None:
            cur = await c.execute(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL, leased_by = NULL,"
                " next_attempt_at = LEAST(next_attempt_at, %s), updated_at = %s"
                " WHERE id = ANY(%s) AND state = 'in_flight' RETURNING destination",
                (now, now, delivery_ids),
            )
            await self._notify(c, [r[0] for r in await cur.fetchall()])

        await self.pool.run(op, transaction=True)

    async def next_due(self, destination: str | None = None) -> float | None:
        if destination is not None:
            return await self._scalar(NEXT_DUE, {"dest": destination})
        return await self._scalar(
            "SELECT MIN(CASE WHEN state = 'pending' THEN next_attempt_at ELSE lease_until END)"
            " FROM deliveries WHERE state IN ('pending', 'in_flight')"
        )

    async def _scalar(self, sql: str, args: Any = None) -> Any:
        async def op(c: Conn) -> Any:
            row = await (await c.execute(sql, args)).fetchone()
            return row[0] if row else None

        return await self.pool.run(op)

    async def _rows(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        async def op(c: Conn) -> list[tuple[Any, ...]]:
            return await (await c.execute(sql, args)).fetchall()

        return await self.pool.run(op)

    # -- inspection and repair -----------------------------------------------------------------
    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]:
        where, args = delivery_where(flt)
        rows = await self._rows(
            f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
            f" {where} ORDER BY d.created_at, d.id LIMIT %s",
            (*args, flt.limit),
        )
        return [delivery_record(r) for r in rows]

    async def get_delivery(
        self, delivery_id: str
    ) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
        async def op(c: Conn) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
            row = await (
                await c.execute(
                    f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
                    " WHERE d.id = %s",
                    (delivery_id,),
                )
            ).fetchone()
            if row is None:
                return None
            cur = await c.execute(
                "SELECT started_at, finished_at, outcome, status, error, number, details"
                " FROM attempts WHERE delivery_id = %s ORDER BY number",
                (delivery_id,),
            )
            attempts = [
                AttemptRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}"))
                for r in await cur.fetchall()
            ]
            return delivery_record(row), attempts

        # One transaction: the delivery and its attempts as of one moment.
        return await self.pool.run(op, transaction=True)

    async def replay_deliveries(
        self, ids: list[str] | None, flt: DeliveryFilter | None, now: float
    ) -> list[str]:
        if ids is not None:
            where, args = "WHERE d.id = ANY(%s)", [list(ids)]
        else:
            where, args = delivery_where(flt or DeliveryFilter())
        # A delivery in flight belongs to its worker; resetting it would send it twice.
        where = (where + " AND" if where else "WHERE") + " d.state != 'in_flight'"

        async def op(c: Conn) -> list[str]:
            cur = await c.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, first_attempt_at = NULL,"
                " next_attempt_at = %s, updated_at = %s WHERE id IN"
                f" (SELECT d.id FROM deliveries d {where} FOR UPDATE)"
                " RETURNING id, destination",
                (now, now, *args),
            )
            rows = await cur.fetchall()
            await self._notify(c, [r[1] for r in rows])
            return sorted(r[0] for r in rows)

        return await self.pool.run(op, transaction=True)

    async def list_events(self, state: str, limit: int = 1000) -> list[EventRecord]:
        rows = await self._rows(
            f"SELECT {EVENT_COLS} FROM events WHERE state = %s ORDER BY id LIMIT %s",
            (state, limit),
        )
        return [event_record(r) for r in rows]

    async def get_event(self, event_id: str) -> EventRecord | None:
        rows = await self._rows(f"SELECT {EVENT_COLS} FROM events WHERE id = %s", (event_id,))
        return event_record(rows[0]) if rows else None

    async def replay_quarantined(self, ids: list[str] | None, now: float) -> list[str]:
        where, args = ("AND id = ANY(%s)", [list(ids)]) if ids is not None else ("", [])

        async def op(c: Conn) -> list[str]:
            cur = await c.execute(
                "UPDATE events SET state = 'received', recheck = true, next_route_at = %s,"
                f" updated_at = %s WHERE state = 'quarantined' {where} RETURNING id",
                (now, now, *args),
            )
            replayed = sorted(r[0] for r in await cur.fetchall())
            if replayed:
                await c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self.token} e"))
            return replayed

        return await self.pool.run(op, transaction=True)

    # -- the console's reads (gateway.store.postgres_reads) -----------------------------------
    async def message_events(self, message_uuid: str, limit: int = 500) -> list[EventRecord]:
        return await self.pool.run(lambda c: postgres_reads.message_events(c, message_uuid, limit))

    async def page_deliveries(self, page: DeliveryPage) -> list[DeliveryRecord]:
        return await self.pool.run(lambda c: postgres_reads.page_deliveries(c, page))

    async def source_activity(self, sources: list[str], since: float) -> list[SourceActivity]:
        return await self.pool.run(lambda c: postgres_reads.source_activity(c, sources, since))

    async def delivered_since(self, destinations: list[str], since: float) -> dict[str, int]:
        return await self.pool.run(lambda c: postgres_reads.delivered_since(c, destinations, since))

    async def recent_errors(self, limit: int = 20) -> list[DeliveryRecord]:
        return await self.pool.run(lambda c: postgres_reads.recent_errors(c, limit))

    async def queue_stats(self, now: float) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT destination, state, COUNT(*), MIN(created_at) FROM deliveries"
            " WHERE state IN ('pending', 'in_flight', 'dead') GROUP BY destination, state"
        )
        return [{"destination": r[0], "state": r[1], "count": r[2], "oldest": r[3]} for r in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        async def op(c: Conn) -> dict[str, dict[str, int]]:
            result = {}
            for table in ("events", "deliveries"):
                cur = await c.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
                result[table] = {r[0]: int(r[1]) for r in await cur.fetchall()}
            return result

        return await self.pool.run(op, transaction=True)
