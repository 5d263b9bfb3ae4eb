"""The SQLite schema. Statements are idempotent; the file is created on first open."""

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw TEXT NOT NULL,                 -- the element exactly as the provider sent it
    state TEXT NOT NULL,
    message_uuid TEXT,
    event TEXT,
    reason TEXT,                       -- quarantine problems, filter reason, or plugin error
    route_attempts INTEGER NOT NULL DEFAULT 0,
    next_route_at REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    leased_by TEXT,
    recheck INTEGER NOT NULL DEFAULT 0, -- replayed from quarantine: check the format again
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_todo ON events (next_route_at) WHERE state = 'received';
CREATE INDEX IF NOT EXISTS events_state ON events (state, id);
CREATE INDEX IF NOT EXISTS events_message ON events (message_uuid);
-- The console's per-source figures: latest callback and callbacks in the last hour.
CREATE INDEX IF NOT EXISTS events_source ON events (source, received_at);

CREATE TABLE IF NOT EXISTS dedupe (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    first_seen REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,   -- resends dropped for this key
    PRIMARY KEY (source, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_age ON dedupe (first_seen);

CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id),
    source TEXT NOT NULL,
    route TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    leased_by TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    first_attempt_at REAL,
    last_error TEXT,
    last_status INTEGER,
    message_uuid TEXT,
    enrichment TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, next_attempt_at)
    WHERE state IN ('pending', 'in_flight');
-- Listing, queue figures and the console's keyset pages, newest first by (created_at, id):
-- with id in the index, a page never sorts the rows that share one created_at (a router batch
-- commits its deliveries with one timestamp). It replaced deliveries_state (without id).
DROP INDEX IF EXISTS deliveries_state;
CREATE INDEX IF NOT EXISTS deliveries_listing ON deliveries (state, destination, created_at, id);
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries (message_uuid);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);
-- The console: delivered per destination lately, and the latest failures.
CREATE INDEX IF NOT EXISTS deliveries_delivered ON deliveries (destination, updated_at)
    WHERE state = 'delivered';
CREATE INDEX IF NOT EXISTS deliveries_failed ON deliveries (updated_at)
    WHERE last_error IS NOT NULL;

CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    details TEXT,                      -- the destination's Outcome.details as JSON, or NULL
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    rank TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""


#: Columns added after the first release: (table, column, declaration). A file written by an
#: earlier release gets them on open (``ALTER TABLE ... ADD COLUMN``; existing rows get NULL).
ADDED_COLUMNS = (("attempts", "details", "TEXT"),)


def add_missing_columns(conn: "sqlite3.Connection") -> None:
    """Upgrade a file written by an earlier release in place (see `ADDED_COLUMNS`)."""
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
