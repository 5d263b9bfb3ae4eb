"""Retention and marks for the PostgreSQL store: the steps of a purge pass and the two mark
scopes (``marks`` for plugins, ``gateway_marks`` for the gateway's own state). A mixin of
`gateway.store.postgres.PostgresStore`, which provides `pool`.

Each step removes at most ``policy.batch`` rows of one kind in its own transaction, reading
through an index in the order it deletes, as on SQLite (`gateway.store.sqlite_retention`):
finished deliveries by last change (``deliveries_delivered_age``, ``deliveries_dead_age``),
events in id (= receive) order up to `floor_id` of the cutoff with a cursor, dedupe keys by
first sight, plugin marks by last write.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import StoreError
from gateway.ids import floor_id
from gateway.store.base import PURGE_KINDS, Footprint, Pacer, RetentionPolicy

Conn = Any
_TABLES = {"plugin": "marks", "gateway": "gateway_marks"}
#: Every table the store keeps (`postgres_schema`), for `footprint`.
STORE_TABLES = (
    "events",
    "dedupe",
    "deliveries",
    "attempts",
    "marks",
    "gateway_marks",
    "cg_schema_version",
)

# `advance_mark` in one statement, so one round trip (it runs once per status event and route:
# the ordering filter is on by default). ``old`` locks the stored row, waiting for a concurrent
# advance of the same key and then reading its result (READ COMMITTED re-reads a row it had to
# wait for); ranks compare in byte order (the column is ``COLLATE "C"``). A new key is inserted
# only while no row exists; when another caller inserts it first, the statement returns
# (false, false, null) and is run again, and then finds that row.
ADVANCE_MARK = """
WITH old AS (
    SELECT rank, value FROM {table} WHERE key = %(key)s FOR UPDATE
), ins AS (
    INSERT INTO {table} (key, rank, value, updated_at)
    SELECT %(key)s, %(rank)s, %(value)s, %(now)s WHERE NOT EXISTS (SELECT 1 FROM old)
    ON CONFLICT (key) DO NOTHING
    RETURNING true
), upd AS (
    UPDATE {table} m SET rank = %(rank)s, value = %(value)s, updated_at = %(now)s
    FROM old WHERE m.key = %(key)s AND old.rank < %(rank)s
    RETURNING true
)
SELECT EXISTS (SELECT 1 FROM ins) OR EXISTS (SELECT 1 FROM upd), EXISTS (SELECT 1 FROM old),
       (SELECT value FROM old)
"""
_ADVANCE = {scope: ADVANCE_MARK.format(table=table) for scope, table in _TABLES.items()}
#: Runs of `ADVANCE_MARK` for one call: a new key raced by other callers' inserts takes two.
ADVANCE_TRIES = 5


def mark_table(scope: str) -> str:
    try:
        return _TABLES[scope]
    except KeyError:
        raise ValueError(f"unknown mark scope {scope!r}") from None


class PostgresRetention:
    """`Store.purge` and the mark methods on PostgreSQL."""

    pool: Any

    async def purge(self, policy: RetentionPolicy, now: float) -> dict[str, int]:
        counts = dict.fromkeys(PURGE_KINDS, 0)
        n, pace = policy.batch, Pacer(policy)
        for state, window in (("delivered", policy.delivered), ("dead", policy.dead)):
            while True:
                removed, attempts = await pace(
                    self.pool.run(_deliveries(state, now - window, n), transaction=True)
                )
                counts[state] += removed
                counts["attempts"] += attempts
                if removed < n:
                    break
        kinds = [
            (s, "events", policy.events, "received_at") for s in ("routed", "unmatched", "filtered")
        ]
        kinds.append(("quarantined", "quarantined", policy.quarantined, "updated_at"))
        for state, kind, window, column in kinds:
            after = ""
            while True:
                removed, last = await pace(
                    self.pool.run(_events(state, now - window, after, n, column), transaction=True)
                )
                counts[kind] += removed
                if removed < n or last is None:
                    break
                after = last
        for kind, sql, window in (
            (
                "dedupe_keys",
                "DELETE FROM dedupe WHERE (source, key) IN (SELECT source, key"
                " FROM dedupe WHERE first_seen < %s ORDER BY first_seen LIMIT %s)",
                policy.dedupe,
            ),
            (
                "marks",
                "DELETE FROM marks WHERE key IN (SELECT key FROM marks"
                " WHERE updated_at < %s ORDER BY updated_at LIMIT %s)",
                policy.marks,
            ),
        ):
            while True:
                removed = await pace(
                    self.pool.run(_count(sql, (now - window, n)), transaction=True)
                )
                counts[kind] += removed
                if removed < n:
                    break
        return counts

    async def count_events(self, state: str) -> int:
        async def op(c: Conn) -> int:
            cur = await c.execute("SELECT COUNT(*) FROM events WHERE state = %s", (state,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return int(await self.pool.run(op))

    # -- marks -----------------------------------------------------------------------------------
    async def footprint(self) -> Footprint:
        """Bytes the store's tables take in the database, their indexes and TOAST included
        (``pg_total_relation_size``, in the connection's schema). The free space is the
        server's to know: None."""

        async def op(c: Conn) -> Any:
            row = await (
                await c.execute(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                    " AND c.relname = ANY(%s)",
                    (list(STORE_TABLES),),
                )
            ).fetchone()
            return row[0]

        return Footprint(bytes=int(await self.pool.run(op)))

    async def advance_mark(
        self, key: str, rank: str, value: str, now: float, *, scope: str = "plugin"
    ) -> tuple[bool, str | None]:
        mark_table(scope)  # an unknown scope is a ValueError, as on the other stores
        sql, args = _ADVANCE[scope], {"key": key, "rank": rank, "value": value, "now": now}

        async def op(c: Conn) -> tuple[bool, bool, str | None]:
            row = await (await c.execute(sql, args)).fetchone()
            return bool(row[0]), bool(row[1]), row[2]

        # Autocommit: a connection found broken runs the statement again (`Pool.run`). If the
        # first run had committed, the second finds its own value stored: (False, value),
        # which callers that store an event id in the value recognise (see plugins/ordering).
        for _ in range(ADVANCE_TRIES):
            advanced, existed, previous = await self.pool.run(op)
            if advanced or existed:
                return advanced, previous
        raise StoreError(f"mark {key!r}: inserted by others {ADVANCE_TRIES} times in a row")

    async def get_mark(self, key: str, *, scope: str = "plugin") -> tuple[str, str] | None:
        table = mark_table(scope)

        async def op(c: Conn) -> Any:
            return await (
                await c.execute(f"SELECT rank, value FROM {table} WHERE key = %s", (key,))
            ).fetchone()

        row = await self.pool.run(op)
        return (row[0], row[1]) if row else None

    async def set_mark(
        self, key: str, value: str | None, now: float, rank: str = "", *, scope: str = "plugin"
    ) -> None:
        table = mark_table(scope)
        if value is None:
            await self.pool.run(lambda c: c.execute(f"DELETE FROM {table} WHERE key = %s", (key,)))
            return
        await self.pool.run(lambda c: _upsert(c, table, key, rank, value, now))


async def _upsert(c: Conn, table: str, key: str, rank: str, value: str, now: float) -> None:
    await c.execute(
        f"INSERT INTO {table} (key, rank, value, updated_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (key) DO UPDATE SET rank = excluded.rank, value = excluded.value,"
        " updated_at = excluded.updated_at",
        (key, rank, value, now),
    )


def _count(sql: str, args: tuple[Any, ...]) -> Any:
    async def op(c: Conn) -> int:
        return int((await c.execute(sql, args)).rowcount)

    return op


def _deliveries(state: str, before: float, n: int) -> Any:
    async def op(c: Conn) -> tuple[int, int]:
        # The state is a literal so that the partial index of that state is used.
        cur = await c.execute(
            f"SELECT id FROM deliveries WHERE state = '{state}' AND updated_at < %s"
            " ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (before, n),
        )
        ids = [r[0] for r in await cur.fetchall()]
        if not ids:
            return 0, 0
        attempts = await c.execute("DELETE FROM attempts WHERE delivery_id = ANY(%s)", (ids,))
        removed = await c.execute(
            f"DELETE FROM deliveries WHERE id = ANY(%s) AND state = '{state}'", (ids,)
        )
        return int(removed.rowcount), int(attempts.rowcount)

    return op


def _events(state: str, before: float, after: str, n: int, column: str) -> Any:
    async def op(c: Conn) -> tuple[int, str | None]:
        cur = await c.execute(
            "DELETE FROM events WHERE id IN (SELECT e.id FROM events e"
            f" WHERE e.state = %s AND e.id > %s AND e.id < %s AND e.{column} < %s"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)"
            " ORDER BY e.id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
            (state, after, floor_id("evt", before), before, n),
        )
        ids = [r[0] for r in await cur.fetchall()]
        return len(ids), max(ids, default=None)

    return op
