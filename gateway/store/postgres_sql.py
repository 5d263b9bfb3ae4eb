"""SQL text of the PostgreSQL store that is long enough to deserve a name.

Placeholders are psycopg's ``%s`` (server-side binding: they reach PostgreSQL as ``$n``).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.store.base import DeliveryFilter, DeliveryRecord, EventRecord, FinishedEvent

#: Columns of one ingested row, in the order `ingest_arrays` expects them.
INGEST_ARRAYS = (
    ("event_id", "text"),
    ("source", "text"),
    ("key", "text"),
    ("raw", "text"),
    ("state", "text"),
    ("message_uuid", "text"),
    ("event", "text"),
    ("reason", "text"),
    ("received_at", "float8"),
    ("lease_until", "float8"),
    ("leased_by", "text"),
)

# Array parameters go in PostgreSQL's binary format (``%b``): psycopg's text format escapes
# every quote of every element with a regular expression, and a stored element is JSON, full
# of quotes: 30 rows took 1.5 ms to send as text and 0.2 ms as binary. An array's element type
# is taken from its first element, so a float column must hold floats only (`floats`).
#
# One statement for a whole group of ingest calls: the rows arrive as one array per column.
# Dedupe keys are inserted in (source, key) order, so two transactions inserting overlapping
# keys lock them in the same order and cannot deadlock; a key another transaction inserted
# first (committed, or committing: the insert waits for it) is skipped. Only the rows whose
# dedupe key went in become events; the event ids returned say which.
INGEST = f"""
WITH input AS (
    SELECT * FROM unnest({", ".join(f"%b::{t}[]" for _, t in INGEST_ARRAYS)})
        AS t({", ".join(name for name, _ in INGEST_ARRAYS)})
), fresh AS (
    INSERT INTO dedupe (source, key, event_id, first_seen)
    SELECT source, key, event_id, received_at FROM input ORDER BY source, key
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
INSERT INTO events (id, source, received_at, raw, state, message_uuid, event, reason,
                    updated_at, lease_until, leased_by)
SELECT i.event_id, i.source, i.received_at, i.raw, i.state, i.message_uuid, i.event, i.reason,
       i.received_at, i.lease_until, i.leased_by
FROM input i JOIN fresh f ON f.event_id = i.event_id
RETURNING id
"""


def floats(values: Any) -> list[float | None]:
    """`values` as floats (None kept), for a ``float8[]`` parameter in binary format."""
    return [None if v is None else float(v) for v in values]


def ingest_arrays(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of `INGEST_ARRAYS` columns -> one list per column (the statement's parameters)."""
    if not rows:
        return [[] for _ in INGEST_ARRAYS]
    columns = [list(column) for column in zip(*rows, strict=True)]
    for i, (_, kind) in enumerate(INGEST_ARRAYS):
        if kind == "float8":
            columns[i] = floats(columns[i])
    return columns


EVENT_COLS = (
    "id, source, received_at, raw, state, message_uuid, event, reason, route_attempts,"
    " next_route_at, recheck"
)
DELIVERY_COLS = (
    "d.id, d.event_id, d.source, d.route, d.destination, d.state, d.attempts, d.next_attempt_at,"
    " d.created_at, d.updated_at, d.first_attempt_at, d.last_error, d.last_status,"
    " d.message_uuid, d.enrichment, e.raw, e.received_at, d.lease_until"
)

# The claims lock the rows they pick with SKIP LOCKED: concurrent claimers (other instances)
# pass over each other's picks instead of waiting or taking the same rows.
CLAIM_EVENTS = f"""
UPDATE events e SET lease_until = %(until)s, leased_by = %(owner)s
FROM (
    SELECT id FROM events
    WHERE state = 'received' AND next_route_at <= %(now)s
      AND (lease_until IS NULL OR lease_until < %(now)s)
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) picked
WHERE e.id = picked.id
RETURNING {", ".join("e." + c.strip() for c in EVENT_COLS.split(","))}
"""

# In flight with an expired lease (a dead instance's work) first, then pending and due.
CLAIM_DELIVERIES = f"""
WITH expired AS (
    SELECT id FROM deliveries
    WHERE state = 'in_flight' AND destination = %(dest)s AND lease_until < %(now)s
    ORDER BY lease_until LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND destination = %(dest)s AND next_attempt_at <= %(now)s
    ORDER BY next_attempt_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT %(limit)s
), claimed AS (
    UPDATE deliveries SET state = 'in_flight', lease_until = %(until)s, leased_by = %(owner)s,
                          updated_at = %(now)s
    FROM picked WHERE deliveries.id = picked.id
    RETURNING deliveries.*
)
SELECT {DELIVERY_COLS} FROM claimed d JOIN events e ON e.id = d.event_id
"""

NEXT_DUE = """
SELECT LEAST(
    (SELECT next_attempt_at FROM deliveries
     WHERE destination = %(dest)s AND state = 'pending' ORDER BY next_attempt_at LIMIT 1),
    (SELECT MIN(lease_until) FROM deliveries
     WHERE destination = %(dest)s AND state = 'in_flight'))
"""

FINISH_ATTEMPT = """
WITH attempt AS (
    INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome, status, error,
                          details)
    VALUES (%(id)s,
            (SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE delivery_id = %(id)s),
            %(started)s, %(finished)s, %(outcome)s, %(status)s, %(error)s, %(details)s)
)
UPDATE deliveries SET state = %(state)s,
    next_attempt_at = COALESCE(%(next)s::float8, next_attempt_at),
    attempts = attempts + %(counts)s, first_attempt_at = COALESCE(first_attempt_at, %(started)s),
    last_error = %(error)s, last_status = %(status)s, lease_until = NULL, leased_by = NULL,
    updated_at = %(now)s
WHERE id = %(id)s
"""

# Many deliveries' attempt outcomes in one statement (`postgres_attempts`): one row per
# delivery (a group never holds a delivery twice), each attempt numbered after its delivery's
# last one.
FINISH_ATTEMPTS = """
WITH a AS (
    SELECT * FROM unnest(%b::text[], %b::float8[], %b::float8[], %b::text[], %b::int[],
                         %b::text[], %b::text[], %b::text[], %b::float8[], %b::int[],
                         %b::float8[])
        AS a(id, started, finished, outcome, status, error, details, state, next, counts, now)
), attempt AS (
    INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome, status, error,
                          details)
    SELECT a.id, (SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE delivery_id = a.id),
           a.started, a.finished, a.outcome, a.status, a.error, a.details
    FROM a
)
UPDATE deliveries d SET state = a.state,
    next_attempt_at = COALESCE(a.next, d.next_attempt_at),
    attempts = d.attempts + a.counts, first_attempt_at = COALESCE(d.first_attempt_at, a.started),
    last_error = a.error, last_status = a.status, lease_until = NULL, leased_by = NULL,
    updated_at = a.now
FROM a WHERE d.id = a.id
"""

# A router batch's verdicts in one statement: events still 'received' get their verdict, and
# only those get their deliveries (an event another router finished first is left alone); the
# destinations that got new deliveries are announced (``NOTIFY``, sent at the commit). Safe to
# run twice (autocommit, see `postgres_conn`): a second run finds the events finished already
# and does nothing.
FINISH_EVENTS = """
WITH verdict AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::float8[])
        AS v(id, state, reason, now)
), done AS (
    UPDATE events e SET state = v.state, reason = v.reason, lease_until = NULL,
        leased_by = NULL, recheck = false, updated_at = v.now
    FROM verdict v WHERE e.id = v.id AND e.state = 'received'
    RETURNING e.id, e.source, e.message_uuid, v.now
), news AS (
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[],
                         %b::text[])
        AS n(id, event_id, route, destination, next_attempt_at, enrichment)
), created AS (
    INSERT INTO deliveries (id, event_id, source, route, destination, state, next_attempt_at,
                            created_at, updated_at, message_uuid, enrichment)
    SELECT n.id, n.event_id, done.source, n.route, n.destination, 'pending', n.next_attempt_at,
           done.now, done.now, done.message_uuid, n.enrichment
    FROM news n JOIN done ON done.id = n.event_id
    ON CONFLICT DO NOTHING
    RETURNING destination
)
SELECT pg_notify(%s, %s || d.destination)
FROM (SELECT DISTINCT destination FROM created ORDER BY destination) d
"""


def finish_arrays(finished: list[FinishedEvent]) -> list[list[Any]]:
    """`FINISH_EVENTS`'s parameters: the verdicts' columns, then the new deliveries'."""
    news = [(d, f) for f in finished for d in f.deliveries]
    return [
        [f.event_id for f in finished],
        [f.state for f in finished],
        [f.reason for f in finished],
        [float(f.now) for f in finished],
        [d.id for d, _ in news],
        [d.event_id for d, _ in news],
        [d.route for d, _ in news],
        [d.destination for d, _ in news],
        [float(d.next_attempt_at) for d, _ in news],
        [json.dumps(d.enrichment, separators=(",", ":")) for d, _ in news],
    ]


def event_record(row: tuple[Any, ...]) -> EventRecord:
    return EventRecord(*row)


def delivery_record(row: tuple[Any, ...]) -> DeliveryRecord:
    values = list(row)
    values[14] = json.loads(values[14] or "{}")
    return DeliveryRecord(*values)


def delivery_where(flt: DeliveryFilter) -> tuple[str, list[Any]]:
    """A WHERE clause on ``deliveries d`` for `flt` (its `limit` aside) and its parameters."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("d.state", flt.state),
        ("d.destination", flt.destination),
        ("d.message_uuid", flt.message_uuid),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            args.append(value)
    if flt.since is not None:
        clauses.append("d.created_at >= %s")
        args.append(flt.since)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args
