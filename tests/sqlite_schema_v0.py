"""The SQLite schema of the release before retention (user_version 0), kept verbatim so tests
can build a database exactly as that release wrote it and check it is upgraded in place."""

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
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, destination, created_at);
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries (message_uuid);
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries (event_id);

CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    rank TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""
