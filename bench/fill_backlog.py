"""Queue N pending deliveries directly in a gateway SQLite file, fast (a benchmark fixture).

    python bench/fill_backlog.py var/gateway.db 1000000 [--destinations hook] [--route bench]
    python bench/fill_backlog.py var/gateway.db 1000000 --history

With ``--history``: N events already routed, with their dedupe keys and no deliveries (a store
after a day of traffic, for intake to write into).

Creates the file with the gateway's own schema (`gateway.store.sqlite_schema.prepare`), then
inserts N routed events of the ``revicom`` source, each with one pending delivery per
destination (due now), as the router would have left them: the same tables, columns, states
and id format (`gateway.ids.new_id`: the ULID time part of now, then a counter as the
26-character id's random part, which keeps ids unique and time-ordered without a random draw
per row). It is much faster than going through the store API
because it runs one transaction with ``synchronous=OFF`` and builds the indexes once at the
end: that is acceptable for a fixture that nobody was promised is durable, and says nothing
about how the gateway stores acknowledged callbacks (always ``synchronous=FULL``).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.ids import new_id
from gateway.store.sqlite_schema import SCHEMA, prepare

RAW = (
    '{"message_uuid":"backlog-%d","channel_type":"SMS","callback_event":"delivered",'
    '"status":"delivered","status_time":"2020-10-16T18:51:13Z"}'
)
CHUNK = 50_000


def _open(db: Path) -> sqlite3.Connection:
    """The fixture's connection: the gateway's schema, WAL, and no fsync (nobody was promised
    this data is durable)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    prepare(conn)  # WAL, the schema and its version, as the gateway makes a new file
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def fill(db: Path, n: int, destinations: list[str], route: str, source: str = "revicom") -> float:
    """Insert the backlog; return the seconds it took."""
    started = time.perf_counter()
    conn = _open(db)
    try:
        indexes = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                " AND tbl_name IN ('events', 'deliveries')"
            )
        ]
        conn.execute("BEGIN")
        for name in indexes:
            conn.execute(f"DROP INDEX {name}")
        now = time.time()
        stamp = new_id("evt", now)[4:14]  # the 10-character millisecond part of a ULID
        per = len(destinations)
        for start in range(0, n, CHUNK):
            events, deliveries = [], []
            for i in range(start, min(n, start + CHUNK)):
                eid = f"evt_{stamp}{i:016d}"
                uuid = f"backlog-{i}"
                events.append((eid, source, now, RAW % i, uuid, now))
                for k, dest in enumerate(destinations):
                    deliveries.append(
                        (
                            f"msg_{stamp}{i * per + k:016d}",
                            eid,
                            source,
                            route,
                            dest,
                            now,
                            now,
                            now,
                            uuid,
                        )
                    )
            conn.executemany(
                "INSERT INTO events (id, source, received_at, raw, state, message_uuid, event,"
                " updated_at) VALUES (?, ?, ?, ?, 'routed', ?, 'delivered', ?)",
                events,
            )
            conn.executemany(
                "INSERT INTO deliveries (id, event_id, source, route, destination, state,"
                " next_attempt_at, created_at, updated_at, message_uuid)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                deliveries,
            )
        conn.execute("COMMIT")
        conn.executescript(SCHEMA)  # re-creates the dropped indexes
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


def fill_history(db: Path, n: int, source: str = "revicom") -> float:
    """Insert `n` events already routed (``unmatched``) with their dedupe keys, as a store holds
    them after a day of traffic: nothing pending, but full tables and indexes for intake to
    insert into. The keys are the ``revicom`` format's own. Returns the seconds it took."""
    from plugins.revicom import RevicomFormat

    fmt = RevicomFormat()
    started = time.perf_counter()
    conn = _open(db)
    try:
        now = time.time()
        stamp = new_id("evt", now)[4:14]
        conn.execute("BEGIN")
        for start in range(0, n, CHUNK):
            events, keys = [], []
            for i in range(start, min(n, start + CHUNK)):
                eid = f"evt_{stamp}{i:016d}"
                raw = RAW % i
                element = json.loads(raw)
                events.append((eid, source, now, raw, element["message_uuid"], now))
                keys.append((source, fmt.dedupe_key(element, raw, {}, 0), eid, now))
            conn.executemany(
                "INSERT INTO events (id, source, received_at, raw, state, message_uuid, event,"
                " updated_at) VALUES (?, ?, ?, ?, 'unmatched', ?, 'delivered', ?)",
                events,
            )
            conn.executemany(
                "INSERT INTO dedupe (source, key, event_id, first_seen) VALUES (?, ?, ?, ?)", keys
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db", type=Path)
    p.add_argument("n", type=int)
    p.add_argument("--destinations", default="hook", help="comma-separated (hook)")
    p.add_argument("--route", default="bench")
    p.add_argument(
        "--history", action="store_true", help="routed events with dedupe keys, no deliveries"
    )
    args = p.parse_args()
    if args.history:
        seconds = fill_history(args.db, args.n)
        print(f"stored {args.n} routed events with dedupe keys in {seconds:.1f}s into {args.db}")
        return
    seconds = fill(args.db, args.n, args.destinations.split(","), args.route)
    print(f"queued {args.n} events x {args.destinations} in {seconds:.1f}s into {args.db}")


if __name__ == "__main__":
    main()
