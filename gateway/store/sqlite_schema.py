"""The SQLite schema and its upgrades. `prepare(conn)` brings any file to the current version.

Versions (``PRAGMA user_version``):

- 0: the first release (events, dedupe, deliveries, attempts, marks).
- 1: retention. ``gateway_marks`` holds the gateway's own state (destination pauses, the silence
  alarm), apart from the plugins' ``marks``, which retention forgets; upgrading moves the
  keys the first release kept among the marks (``paused:``, ``silence:``, ``last-seen:``).
  Indexes for the retention pass: finished deliveries by last change, marks by last write.

New files are created with ``auto_vacuum=INCREMENTAL``, so `gateway.store.sqlite_retention` can
hand pages freed by retention back to the filesystem. A file of version 0 keeps the mode it was
made with (``NONE``): switching needs a full ``VACUUM``, which rewrites the whole file under an
exclusive lock and needs as much free disk again, so it is never done behind the operator's
back (docs/operations.md, "Disk space"). Such a file still stops growing at steady state: the
pages retention frees go on SQLite's free list and new rows reuse them.
"""

from __future__ import annotations

import sqlite3

VERSION = 1

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
-- retention: finished deliveries by their last change, one partial index per state (so that
-- pending and in-flight deliveries, changed on every claim, are in neither)
CREATE INDEX IF NOT EXISTS deliveries_delivered_age ON deliveries (updated_at)
    WHERE state = 'delivered';
CREATE INDEX IF NOT EXISTS deliveries_dead_age ON deliveries (updated_at)
    WHERE state = 'dead';

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

-- plugin marks (scope 'plugin'): forgotten once unwritten for the retention window
CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    rank TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS marks_age ON marks (updated_at);

-- the gateway's own state (scope 'gateway'): pauses, the silence alarm; never purged
CREATE TABLE IF NOT EXISTS gateway_marks (
    key TEXT PRIMARY KEY,
    rank TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""

#: Columns added after the first release: (table, column, declaration). A file written by an
#: earlier release gets them on open (``ALTER TABLE ... ADD COLUMN``; existing rows get NULL).
ADDED_COLUMNS = (("attempts", "details", "TEXT"),)

#: Key prefixes the first release wrote among the plugin marks for the gateway's own state.
V0_GATEWAY_PREFIXES = ("paused:", "silence:", "last-seen:", "console-revoked:")


def prepare(conn: sqlite3.Connection) -> None:
    """Switch `conn` to WAL, then create the schema in a new file or upgrade an older one in
    place. Idempotent, and safe when several processes open the same file at once (the upgrade
    is one IMMEDIATE transaction that checks the version first). `conn` must be in autocommit
    mode."""
    if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
        # Only takes effect before the first table exists and before the switch to WAL.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)  # only reads when every table and index exists
    add_missing_columns(conn)
    if conn.execute("PRAGMA user_version").fetchone()[0] >= VERSION:
        return  # no write lock needed: opening beside busy writers stays cheap
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            for prefix in V0_GATEWAY_PREFIXES:
                # A range on the primary key: keys starting with the prefix.
                bounds = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
                conn.execute(
                    "INSERT OR REPLACE INTO gateway_marks (key, rank, value, updated_at)"
                    " SELECT key, rank, value, updated_at FROM marks WHERE key >= ? AND key < ?",
                    bounds,
                )
                conn.execute("DELETE FROM marks WHERE key >= ? AND key < ?", bounds)
        if version < VERSION:
            conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def add_missing_columns(conn: sqlite3.Connection) -> None:
    """Upgrade a file written by an earlier release in place (see `ADDED_COLUMNS`)."""
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
