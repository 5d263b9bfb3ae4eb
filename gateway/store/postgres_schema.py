"""The PostgreSQL schema and its migrations.

`MIGRATIONS[n]` takes a database at schema version ``n`` to ``n + 1``; `migrate` applies the
missing ones at start-up, under a transaction-level advisory lock so that instances starting
together take turns (the second finds the work done). The version lives in
``cg_schema_version``. Table names match the SQLite store's; to keep them apart from other
tables in a shared database, give the gateway its own schema through libpq's ``options``
(``?options=-csearch_path%3Dgateway``).

Times are epoch seconds as ``double precision`` (the callers own the clock, as with SQLite).
"""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.errors import StoreError

#: Key of the advisory lock that serialises migrations (any constant; this one spells "cgw1").
MIGRATION_LOCK = 0x63677731

SCHEMA_V1 = """
CREATE TABLE events (
    id text COLLATE "C" PRIMARY KEY,
    source text NOT NULL,
    received_at double precision NOT NULL,
    raw text NOT NULL,                        -- the element exactly as the provider sent it
    state text NOT NULL,
    message_uuid text,
    event text,
    reason text,                              -- quarantine problems, filter reason, plugin error
    route_attempts integer NOT NULL DEFAULT 0,
    next_route_at double precision NOT NULL DEFAULT 0,
    lease_until double precision,
    leased_by text,
    recheck boolean NOT NULL DEFAULT false,   -- replayed from quarantine: check the format again
    updated_at double precision NOT NULL
);
CREATE INDEX events_todo ON events (next_route_at) WHERE state = 'received';
CREATE INDEX events_state ON events (state, id);
CREATE INDEX events_message ON events (message_uuid);
CREATE INDEX events_source ON events (source, received_at);

CREATE TABLE dedupe (
    source text NOT NULL,
    key text NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    first_seen double precision NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX dedupe_age ON dedupe (first_seen);

CREATE TABLE deliveries (
    id text COLLATE "C" PRIMARY KEY,
    event_id text COLLATE "C" NOT NULL REFERENCES events (id),
    source text NOT NULL,
    route text NOT NULL,
    destination text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    lease_until double precision,
    leased_by text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    first_attempt_at double precision,
    last_error text,
    last_status integer,
    message_uuid text,
    enrichment text NOT NULL DEFAULT '{}'
);
CREATE INDEX deliveries_pending ON deliveries (destination, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (destination, lease_until)
    WHERE state = 'in_flight';
CREATE INDEX deliveries_state ON deliveries (state, destination, created_at);
CREATE INDEX deliveries_message ON deliveries (message_uuid);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_created ON deliveries (created_at, id);
CREATE INDEX deliveries_delivered ON deliveries (destination, updated_at)
    WHERE state = 'delivered';
CREATE INDEX deliveries_failed ON deliveries (updated_at) WHERE last_error IS NOT NULL;

CREATE TABLE attempts (
    delivery_id text COLLATE "C" NOT NULL,
    number integer NOT NULL,
    started_at double precision NOT NULL,
    finished_at double precision NOT NULL,
    outcome text NOT NULL,
    status integer,
    error text,
    details text,                             -- the destination's Outcome.details as JSON
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE marks (
    key text PRIMARY KEY,
    rank text COLLATE "C" NOT NULL,
    value text NOT NULL,
    updated_at double precision NOT NULL
);
"""

#: Version 2, retention: the gateway's own marks (destination pauses, the silence alarm,
#: console session revocations) move to ``gateway_marks``, which retention never touches and
#: plugins never reach; indexes for the retention pass.
SCHEMA_V2 = """
CREATE TABLE gateway_marks (
    key text PRIMARY KEY,
    rank text COLLATE "C" NOT NULL,
    value text NOT NULL,
    updated_at double precision NOT NULL
);
INSERT INTO gateway_marks (key, rank, value, updated_at)
    SELECT key, rank, value, updated_at FROM marks
    WHERE key LIKE 'paused:%' OR key LIKE 'silence:%' OR key LIKE 'last-seen:%'
       OR key LIKE 'console-revoked:%';
DELETE FROM marks
    WHERE key LIKE 'paused:%' OR key LIKE 'silence:%' OR key LIKE 'last-seen:%'
       OR key LIKE 'console-revoked:%';
CREATE INDEX marks_age ON marks (updated_at);
CREATE INDEX deliveries_delivered_age ON deliveries (updated_at) WHERE state = 'delivered';
CREATE INDEX deliveries_dead_age ON deliveries (updated_at) WHERE state = 'dead';
"""

#: Index n: the statements that take schema version n to n + 1.
MIGRATIONS: list[str] = [SCHEMA_V1, SCHEMA_V2]

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS cg_schema_version (
    version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: psycopg.AsyncConnection[Any]) -> None:
    """Bring the database to the latest schema version, in one transaction, holding the
    advisory lock `MIGRATION_LOCK` so that instances starting together take turns."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(VERSION_TABLE)
        cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM cg_schema_version")
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the database's schema is at version {version}, newer than this gateway's"
                f" {len(MIGRATIONS)}: upgrade the gateway"
            )
        for n in range(version, len(MIGRATIONS)):
            await conn.execute(MIGRATIONS[n])
            await conn.execute("INSERT INTO cg_schema_version (version) VALUES (%s)", (n + 1,))
