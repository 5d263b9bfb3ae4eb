"""SQLite store: WAL journal, ``synchronous=FULL`` (every COMMIT fsyncs the WAL, so an
acknowledged callback survives power loss), group commit through `Committer`.

Several processes (Sanic workers, the CLI) may open the same file; their writers take turns
through a lock file beside it (``<file>-lock``, see `Committer`), SQLite's locking and busy
timeout stay underneath, and claims are atomic conditional UPDATEs.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.ids import new_id, new_ids
from gateway.store import sqlite_reads
from gateway.store.base import (
    AttemptRecord,
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
from gateway.store.committer import Committer
from gateway.store.owners import OwnerLocks
from gateway.store.sqlite_inspect import SQLiteInspection
from gateway.store.sqlite_retention import WAL_LIMIT, SQLiteRetention
from gateway.store.sqlite_rows import (
    DELIVERY_COLS,
    EVENT_COLS,
    EXPIRED,
    FIRST_PENDING,
    PENDING_DUE,
    delivery_row,
    event_row,
    finish_event,
)
from gateway.store.sqlite_schema import prepare

#: The readiness probe's row: never visible (deleted in the transaction that inserts it), and
#: about the size of a small group of callbacks, so that it needs the space intake would.
PROBE_KEY = "\x00readyz-probe"
PROBE_BYTES = 16 * 1024


class SQLiteStore(SQLiteInspection, SQLiteRetention, Store):
    """See the module docstring. `path` is created with its parent directory if missing."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._committer: Committer | None = None
        self._owners: OwnerLocks | None = None

    @property
    def lock_path(self) -> Path:
        """Writers on this file take turns through a ``flock`` on this file (see `Committer`)."""
        return self.path.with_name(self.path.name + "-lock")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            # Creating or upgrading the schema writes: take the writers' turn like a group
            # commit does, so opening beside busy writers never runs out of the busy timeout.
            lock = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                prepare(conn)  # WAL and the schema
            finally:
                os.close(lock)  # also releases the flock
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> None:
        if self._committer is None:
            self._committer = Committer(
                self._connect, name=f"sqlite:{self.path.name}", lock_path=self.lock_path
            )
            self._committer.start()

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer.stop()
        if self._owners is not None:
            self._owners.release()
            self._owners = None

    async def adopt_owner(self, owner: str, now: float) -> int:
        """See `Store.adopt_owner`: the proof is a ``flock`` per owner (`gateway.store.owners`)
        in ``<database>-owners/``."""
        locks = OwnerLocks(self.path.with_name(self.path.name + "-owners"))
        own = locks.hold(owner)
        self._owners = locks

        def op(c: sqlite3.Connection) -> int:
            owners = {
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT leased_by FROM events WHERE state = 'received'"
                    " AND leased_by IS NOT NULL"
                )
            }
            owners |= {
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT leased_by FROM deliveries WHERE state = 'in_flight'"
                    " AND leased_by IS NOT NULL"
                )
            }
            freed = 0
            for dead in sorted(o for o in owners if (o == owner and own) or locks.is_dead(o)):
                freed += c.execute(
                    "UPDATE events SET lease_until = NULL, leased_by = NULL"
                    " WHERE state = 'received' AND leased_by = ?",
                    (dead,),
                ).rowcount
                freed += c.execute(  # expired now: claimed again as after the lease ran out
                    "UPDATE deliveries SET lease_until = 0"
                    " WHERE state = 'in_flight' AND leased_by = ?",
                    (dead,),
                ).rowcount
            return freed

        return int(await self._write(op))

    @property
    def committer(self) -> Committer:
        assert self._committer is not None, "store is not open"
        return self._committer

    async def _write(self, fn: Any) -> Any:
        return await self.committer.run(fn, write=True)

    async def _bookkeeping(self, fn: Any) -> Any:
        """A write whose loss in a power cut only means a delivery is tried again (see
        `Committer`): committed without fsync unless grouped with a durable write."""
        return await self.committer.run(fn, write=True, sync=False)

    async def _read(self, fn: Any) -> Any:
        return await self.committer.run(fn, write=False)

    async def ping(self) -> None:
        """A read while commits succeed; after a write failed for lack of storage (disk full,
        I/O error), a probe write of `PROBE_BYTES` (inserted and deleted in one transaction,
        so nothing stays) that must commit: readiness follows whether intake could commit."""
        failure = self.committer.write_failure
        if failure is None:
            await self._read(lambda c: c.execute("SELECT 1").fetchone())
            return

        def probe(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO marks (key, rank, value, updated_at) VALUES (?, '', ?, 0)",
                (PROBE_KEY, "x" * PROBE_BYTES),
            )
            c.execute("DELETE FROM marks WHERE key = ?", (PROBE_KEY,))

        try:
            await self._write(probe)
        except StoreError as e:
            raise StoreError(f"cannot commit: {self.committer.write_failure or e}") from None
        if self.committer.write_failure is not None:  # another write of the group failed
            raise StoreError(f"cannot commit: {self.committer.write_failure}")

    # -- intake -----------------------------------------------------------------------------
    async def ingest(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None = None
    ) -> IngestResult:
        return await self._write(self._ingest_op(source, items, now, lease))

    def start_ingest(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None = None
    ) -> asyncio.Future[IngestResult]:
        # The group commit's own future: no task and no coroutine per request.
        return self.committer.submit(self._ingest_op(source, items, now, lease))

    def _ingest_op(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None
    ) -> Callable[[sqlite3.Connection], IngestResult]:
        until, owner = (lease.until, lease.owner) if lease else (None, None)

        def op(c: sqlite3.Connection) -> IngestResult:
            accepted = duplicates = quarantined = 0
            ids = []
            outcomes = []
            for item, event_id in zip(items, new_ids("evt", len(items), now), strict=True):
                cur = c.execute(
                    "INSERT INTO dedupe (source, key, event_id, first_seen) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (source, item.dedupe_key, event_id, now),
                )
                if cur.rowcount == 0:
                    c.execute(
                        "UPDATE dedupe SET hits = hits + 1 WHERE source = ? AND key = ?",
                        (source, item.dedupe_key),
                    )
                    duplicates += 1
                    outcomes.append("duplicate")
                    continue
                state = "quarantined" if item.problems else "received"
                reason = "; ".join(item.problems) if item.problems else None
                leased = not item.problems
                c.execute(
                    "INSERT INTO events (id, source, received_at, raw, state, message_uuid, event,"
                    " reason, updated_at, lease_until, leased_by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        event_id,
                        source,
                        now,
                        item.raw,
                        state,
                        item.message_uuid,
                        item.event,
                        reason,
                        now,
                        until if leased else None,
                        owner if leased else None,
                    ),
                )
                ids.append(event_id)
                if item.problems:
                    quarantined += 1
                    outcomes.append("quarantined")
                else:
                    accepted += 1
                    outcomes.append("accepted")
            return IngestResult(accepted, duplicates, quarantined, tuple(ids), tuple(outcomes))

        return op

    # -- router ------------------------------------------------------------------------------
    async def claim_events(
        self, owner: str, limit: int, lease: float, now: float
    ) -> list[EventRecord]:
        def op(c: sqlite3.Connection) -> list[EventRecord]:
            rows = c.execute(
                f"UPDATE events SET lease_until = :until, leased_by = :owner WHERE id IN ("
                " SELECT id FROM events WHERE state = 'received' AND next_route_at <= :now"
                " AND (lease_until IS NULL OR lease_until < :now) ORDER BY id LIMIT :limit)"
                f" RETURNING {EVENT_COLS}",
                {"until": now + lease, "owner": owner, "now": now, "limit": limit},
            ).fetchall()
            return sorted((event_row(r) for r in rows), key=lambda e: e.id)

        return await self._write(op)

    async def finish_event(
        self,
        event_id: str,
        state: str,
        deliveries: list[NewDelivery],
        now: float,
        reason: str | None = None,
    ) -> None:
        finished = FinishedEvent(event_id, state, deliveries, now, reason)
        await self._write(lambda c: finish_event(c, finished))

    async def finish_events(self, finished: list[FinishedEvent]) -> None:
        # One operation for the router's whole batch: one future and one turn of the
        # committer instead of one per event.
        def op(c: sqlite3.Connection) -> None:
            # Verdicts without deliveries (unmatched, filtered) need nothing back from their
            # row: one UPDATE per distinct verdict instead of one per event, each statement
            # being a GIL hand-off between the committer and the event loop.
            plain: dict[tuple[str, str | None, float], list[str]] = {}
            for f in finished:
                if f.deliveries:
                    finish_event(c, f)
                else:
                    plain.setdefault((f.state, f.reason, f.now), []).append(f.event_id)
            for (state, reason, now), ids in plain.items():
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    c.execute(
                        "UPDATE events SET state = ?, reason = ?, lease_until = NULL,"
                        " leased_by = NULL, recheck = 0, updated_at = ?"
                        f" WHERE state = 'received' AND id IN ({', '.join('?' * len(chunk))})",
                        (state, reason, now, *chunk),
                    )

        if finished:
            await self._write(op)

    async def hold_event(self, event_id: str, reason: str, retry_at: float, now: float) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE events SET reason = ?, next_route_at = ?,"
                " route_attempts = route_attempts + 1, lease_until = NULL, leased_by = NULL,"
                " updated_at = ? WHERE id = ?",
                (reason, retry_at, now, event_id),
            )
        )

    async def quarantine_event(self, event_id: str, reason: str, now: float) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE events SET state = 'quarantined', reason = ?, lease_until = NULL,"
                " leased_by = NULL, recheck = 0, updated_at = ? WHERE id = ?",
                (reason, now, event_id),
            )
        )

    async def has_due_events(self, now: float) -> float | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT MIN(MAX(next_route_at, COALESCE(lease_until, 0))) FROM events"
                " WHERE state = 'received'"
            ).fetchone()
        )
        return row[0]

    # -- delivery ----------------------------------------------------------------------------
    async def claim_deliveries(
        self, owner: str, destination: str, limit: int, lease: float, now: float
    ) -> list[DeliveryRecord]:
        def op(c: sqlite3.Connection) -> list[DeliveryRecord]:
            ids = [
                r[0]
                for r in c.execute(
                    "UPDATE deliveries SET state = 'in_flight', lease_until = :until,"
                    " leased_by = :owner, updated_at = :now WHERE id IN ("
                    f" SELECT id FROM ({EXPIRED}) UNION ALL SELECT id FROM ({PENDING_DUE})"
                    " LIMIT :limit) RETURNING id",
                    {
                        "until": now + lease,
                        "owner": owner,
                        "now": now,
                        "dest": destination,
                        "limit": limit,
                    },
                ).fetchall()
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = c.execute(
                f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"
                f" WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at, d.id",
                ids,
            ).fetchall()
            return [delivery_row(r) for r in rows]

        return await self._bookkeeping(op)

    async def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        state: str,
        next_attempt_at: float | None,
        counts: bool,
        now: float,
    ) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome,"
                " status, error, details) VALUES (?, (SELECT COALESCE(MAX(number), 0) + 1"
                " FROM attempts WHERE delivery_id = ?), ?, ?, ?, ?, ?, ?)",
                (
                    delivery_id,
                    delivery_id,
                    attempt.started_at,
                    attempt.finished_at,
                    attempt.outcome,
                    attempt.status,
                    attempt.error,
                    json.dumps(attempt.details) if attempt.details else None,
                ),
            )
            c.execute(
                "UPDATE deliveries SET state = ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                " attempts = attempts + ?, first_attempt_at = COALESCE(first_attempt_at, ?),"
                " last_error = ?, last_status = ?, lease_until = NULL, leased_by = NULL,"
                " updated_at = ? WHERE id = ?",
                (
                    state,
                    next_attempt_at,
                    1 if counts else 0,
                    attempt.started_at,
                    attempt.error,
                    attempt.status,
                    now,
                    delivery_id,
                ),
            )

        await self._bookkeeping(op)

    async def release(self, delivery_ids: list[str], now: float) -> None:
        await self._bookkeeping(
            lambda c: c.executemany(
                "UPDATE deliveries SET state = 'pending', lease_until = NULL, leased_by = NULL,"
                " next_attempt_at = MIN(next_attempt_at, ?), updated_at = ?"
                " WHERE id = ? AND state = 'in_flight'",
                [(now, now, i) for i in delivery_ids],
            )
        )

    async def next_due(self, destination: str | None = None) -> float | None:
        if destination is not None:
            # Two index lookups instead of visiting every queued row of the destination.
            row = await self._read(
                lambda c: c.execute(
                    f"SELECT ({FIRST_PENDING}), (SELECT MIN(lease_until) FROM deliveries"
                    " WHERE state = 'in_flight' AND destination = :dest)",
                    {"dest": destination},
                ).fetchone()
            )
            times = [t for t in row if t is not None]
            return min(times) if times else None
        where, args = ("AND destination = ?", (destination,)) if destination else ("", ())
        row = await self._read(
            lambda c: c.execute(
                "SELECT MIN(CASE WHEN state = 'pending' THEN next_attempt_at ELSE lease_until END)"
                f" FROM deliveries WHERE state IN ('pending', 'in_flight') {where}",
                args,
            ).fetchone()
        )
        return row[0]

    # -- the console's reads (gateway.store.sqlite_reads) -------------------------------------
    async def message_events(self, message_uuid: str, limit: int = 500) -> list[EventRecord]:
        return await self._read(lambda c: sqlite_reads.message_events(c, message_uuid, limit))

    async def page_deliveries(self, page: DeliveryPage) -> list[DeliveryRecord]:
        return await self._read(lambda c: sqlite_reads.page_deliveries(c, page))

    async def source_activity(self, sources: list[str], since: float) -> list[SourceActivity]:
        return await self._read(lambda c: sqlite_reads.source_activity(c, sources, since))

    async def delivered_since(self, destinations: list[str], since: float) -> dict[str, int]:
        return await self._read(lambda c: sqlite_reads.delivered_since(c, destinations, since))

    async def recent_errors(self, limit: int = 20) -> list[DeliveryRecord]:
        return await self._read(lambda c: sqlite_reads.recent_errors(c, limit))

    async def queue_figures(self, cap: int) -> list[dict[str, Any]]:
        return await self._read(lambda c: sqlite_reads.queue_figures(c, cap))


def new_delivery_id(now: float | None = None) -> str:
    """A delivery id; also the ``webhook-id`` receivers use to drop repeats."""
    return new_id("msg", now)
