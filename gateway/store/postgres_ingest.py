"""Group commit of `ingest` calls for the PostgreSQL store.

Concurrent `ingest` calls queue here and are committed in groups (`postgres_groups`). One
statement (`postgres_sql.INGEST`), run in autocommit mode so that it is its own transaction and
costs one round trip, inserts every dedupe key with ``ON CONFLICT DO NOTHING`` and the events
whose key went in. Each caller's future resolves after that statement's COMMIT
(``synchronous_commit`` on: flushed to the WAL on disk), so N concurrent requests cost one WAL
flush, not N. If the group fails for a reason
other than the connection, each call is run again on its own, so one bad call does not fail
the others; if it fails otherwise, every call of the group fails with `StoreError` and none
of it is acknowledged.

A group whose connection broke is sent again (`Pool.run`); the answer to the first send may
have been lost after it committed. The event ids are made before the first send, so the
second send tells its own earlier commit from another instance's by looking the ids up: an
event stored under one of this group's ids is this group's, accepted, not a duplicate.

Dedupe across processes is the primary key of ``dedupe``: a key another transaction inserted
first is skipped (an insert of a key whose insert is still uncommitted waits for that
transaction), so two instances given the same resend at the same moment store it once.
Within one group, the first call queued with a key gets it; later ones are duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from gateway.ids import new_id
from gateway.store.base import IncomingEvent, IngestResult, Lease
from gateway.store.postgres_conn import CHANNEL, Pool
from gateway.store.postgres_groups import Groups
from gateway.store.postgres_sql import INGEST, ingest_arrays


@dataclass
class _Call:
    source: str
    items: list[IncomingEvent]
    now: float
    lease: Lease | None
    future: asyncio.Future[IngestResult]
    #: Per item: its row (event id first), or None when an earlier item of the group has its key.
    rows: list[tuple[Any, ...] | None] = field(default_factory=list)


class IngestGroups(Groups[_Call, set[str]]):
    """See the module docstring. `token` prefixes this store's notifications."""

    def __init__(self, pool: Pool, token: str) -> None:
        super().__init__("postgresql-ingest", "ingest")
        self._pool = pool
        self._token = token

    async def submit(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None
    ) -> IngestResult:
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(source, items, now, lease, future))
        return await future

    async def _commit(self, group: list[_Call]) -> set[str]:
        taken: set[tuple[str, str]] = set()
        for call in group:
            call.rows = [_row(call, item, taken) for item in call.items]
        sends = 0

        async def send(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            nonlocal sends
            sends += 1
            return await self._insert(conn, group, again=sends > 1)

        return await self._pool.run(send)

    def _resolve(self, call: _Call, result: set[str]) -> None:
        call.future.set_result(_result(call, result))

    async def _insert(
        self, conn: psycopg.AsyncConnection[Any], group: list[_Call], again: bool
    ) -> set[str]:
        rows = [r for call in group for r in call.rows if r is not None]
        if not rows:
            return set()
        cur = await conn.execute(INGEST, ingest_arrays(rows))
        inserted = {r[0] for r in await cur.fetchall()}
        if again:  # see the module docstring
            cur = await conn.execute(
                "SELECT id FROM events WHERE id = ANY(%s)", ([r[0] for r in rows],)
            )
            inserted |= {r[0] for r in await cur.fetchall()}
        # Events committed without a lease are for any instance's router: wake the idle ones.
        # Only a hint, sent after the commit: its failure must not fail the ingest.
        if any(r[0] in inserted and r[4] == "received" and r[9] is None for r in rows):
            with contextlib.suppress(psycopg.Error):
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self._token} e"))
        return inserted


def _row(call: _Call, item: IncomingEvent, taken: set[tuple[str, str]]) -> tuple[Any, ...] | None:
    key = (call.source, item.dedupe_key)
    if key in taken:
        return None
    taken.add(key)
    leased = call.lease is not None and not item.problems
    return (
        new_id("evt", call.now),
        _text(call.source),
        _text(item.dedupe_key),
        _text(item.raw),
        "quarantined" if item.problems else "received",
        _text(item.message_uuid),
        _text(item.event),
        _text("; ".join(item.problems)) if item.problems else None,
        call.now,
        call.lease.until if leased and call.lease else None,
        call.lease.owner if leased and call.lease else None,
    )


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters (SQLite's can): a parsed field holding one
    is stored with it spelled as JSON spells it, the same way every time, so a resend still
    meets its dedupe key instead of failing its commit (and being resent) forever."""
    return value.replace("\x00", "\\u0000") if value and "\x00" in value else value


def _result(call: _Call, inserted: set[str]) -> IngestResult:
    accepted = duplicates = quarantined = 0
    ids: list[str] = []
    outcomes: list[str] = []
    for item, row in zip(call.items, call.rows, strict=True):
        if row is None or row[0] not in inserted:
            duplicates += 1
            outcomes.append("duplicate")
            continue
        ids.append(row[0])
        if item.problems:
            quarantined += 1
            outcomes.append("quarantined")
        else:
            accepted += 1
            outcomes.append("accepted")
    return IngestResult(accepted, duplicates, quarantined, tuple(ids), tuple(outcomes))
