"""psycopg 3 (async) against asyncpg on intake-shaped group commits.

    .venv/bin/python bench/bench_pg_drivers.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--seconds 5] [--clients 1,32,128] [--items 1] [--rows psycopg,asyncpg,nogroup,store]

Creates a scratch database (``cg_bench_<random>``) with the gateway's schema, then for each
driver and each number of concurrent clients runs the same workload: every client commits
`--items` fresh callbacks at a time and waits for the COMMIT (``synchronous_commit`` on), as an
intake request does. One committer task per driver collects whatever calls are queued and runs
them as one transaction: one ``INSERT .. ON CONFLICT DO NOTHING`` into ``dedupe`` chained
(``WITH``) into one ``INSERT`` into ``events``, the statement `gateway.store.postgres` uses.
A row ``psycopg, no group`` gives each call its own transaction on a pool of 16 connections,
and ``store`` calls `PostgresStore.ingest` itself (its group commit, `IN_FLIGHT` groups at
once). Prints calls/s, events/s and latency percentiles; drops the database. asyncpg is not a
dependency of the gateway: ``.venv/bin/pip install asyncpg`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.ids import new_id
from gateway.store import IncomingEvent
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_sql import INGEST, INGEST_ARRAYS, ingest_arrays

Rows = list[tuple[Any, ...]]


def rows_for(n: int) -> Rows:
    now = time.time()
    return [
        (
            new_id("evt", now),
            "revicom",
            uuid.uuid4().hex,
            '{"message_uuid":"x","k":1}',
            "received",
            "x",
            "delivered",
            None,
            now,
            None,
            None,
        )
        for _ in range(n)
    ]


class Grouper:
    """Queues calls; one task commits all queued calls in one transaction."""

    def __init__(self, commit: Callable[[Rows], Awaitable[None]]) -> None:
        self.commit = commit
        self.queue: list[tuple[Rows, asyncio.Future[None]]] = []
        self.more = asyncio.Event()
        self.groups = 0
        self.task = asyncio.create_task(self.run())

    async def submit(self, rows: Rows) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((rows, fut))
        self.more.set()
        await fut

    async def run(self) -> None:
        while True:
            await self.more.wait()
            self.more.clear()
            group, self.queue = self.queue, []
            if not group:
                continue
            await self.commit([r for rows, _ in group for r in rows])
            self.groups += 1
            for _, fut in group:
                fut.set_result(None)


async def drive(
    submit: Callable[[Rows], Awaitable[None]], clients: int, items: int, seconds: float
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            rows = rows_for(items)
            t = time.perf_counter()
            await submit(rows)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies


def report(
    name: str,
    clients: int,
    items: int,
    seconds: float,
    calls: int,
    latencies: list[float],
    groups: int | None,
) -> None:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    per_group = f"{calls / groups:6.1f}" if groups else "     -"
    print(
        f"{name:20} {clients:7} {calls / seconds:9.0f} {calls * items / seconds:9.0f}"
        f" {per_group} {q[49] * 1000:7.2f} {q[98] * 1000:7.2f}",
        flush=True,
    )


async def psycopg_grouped(dsn: str, clients: int, items: int, seconds: float) -> None:
    # The group is one statement: in autocommit mode it is its own transaction, committed
    # (and flushed, synchronous_commit on) before the answer comes back: one round trip.
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def commit(rows: Rows) -> None:
        await (await conn.execute(INGEST, ingest_arrays(rows))).fetchall()

    g = Grouper(commit)
    calls, lat = await drive(g.submit, clients, items, seconds)
    g.task.cancel()
    report("psycopg", clients, items, seconds, calls, lat, g.groups)
    await conn.close()


async def psycopg_ungrouped(dsn: str, clients: int, items: int, seconds: float) -> None:
    async with AsyncConnectionPool(dsn, min_size=16, max_size=16, open=False) as pool:
        await pool.wait()

        async def submit(rows: Rows) -> None:
            async with pool.connection() as conn:
                await conn.execute(INGEST, ingest_arrays(rows))

        calls, lat = await drive(submit, clients, items, seconds)
    report("psycopg, no group", clients, items, seconds, calls, lat, None)


async def asyncpg_grouped(dsn: str, clients: int, items: int, seconds: float) -> None:
    conn = await asyncpg.connect(dsn)
    # asyncpg numbers its parameters ($1..); psycopg's %s become the same $n on the wire.
    sql = INGEST
    for n in range(1, len(INGEST_ARRAYS) + 1):
        sql = sql.replace("%s", f"${n}", 1)
    stmt = await conn.prepare(sql)

    async def commit(rows: Rows) -> None:
        await stmt.fetch(*ingest_arrays(rows))

    g = Grouper(commit)
    calls, lat = await drive(g.submit, clients, items, seconds)
    g.task.cancel()
    report("asyncpg", clients, items, seconds, calls, lat, g.groups)
    await conn.close()


async def store_grouped(dsn: str, clients: int, items: int, seconds: float) -> None:
    store = PostgresStore(dsn)
    await store.open()

    async def submit(rows: Rows) -> None:
        await store.ingest(
            "revicom", [IncomingEvent(r[3], r[2], r[5], r[6]) for r in rows], time.time()
        )

    calls, lat = await drive(submit, clients, items, seconds)
    assert store._ingest is not None
    report("store", clients, items, seconds, calls, lat, store._ingest.groups)
    await store.close()


ROWS = {
    "psycopg": psycopg_grouped,
    "asyncpg": asyncpg_grouped,
    "nogroup": psycopg_ungrouped,
    "store": store_grouped,
}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", default="1,32,128")
    ap.add_argument("--items", type=int, default=1)
    ap.add_argument(
        "--rows",
        default="psycopg,asyncpg,nogroup,store",
        help="which rows: psycopg, asyncpg, nogroup, store",
    )
    args = ap.parse_args()
    name = f"cg_bench_{uuid.uuid4().hex[:8]}"
    admin = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = args.dsn.rsplit("/", 1)[0] + "/" + name
    try:
        schema = PostgresStore(dsn)
        await schema.open()  # creates the tables
        await schema.close()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            row = await (await c.execute("SHOW synchronous_commit")).fetchone()
            print(
                f"synchronous_commit={row[0] if row else '?'}; {args.items} event(s) a call,"
                f" {args.seconds:g}s a run"
            )
        print(
            f"{'driver':20} {'clients':>7} {'calls/s':>9} {'events/s':>9} {'/group':>6}"
            f" {'p50 ms':>7} {'p99 ms':>7}"
        )
        for clients in (int(c) for c in args.clients.split(",")):
            for row in args.rows.split(","):
                await ROWS[row](dsn, clients, args.items, args.seconds)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
