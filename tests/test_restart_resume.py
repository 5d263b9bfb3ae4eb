"""A gateway restarted after a crash resumes its own leased work at once (SQLite owner locks,
`gateway.store.owners`; PostgreSQL session advisory locks, `gateway.store.postgres_owners`),
not when the leases expire; a live gateway's leases are never taken.

The lease is 60 s so that "at once" and "after the lease" cannot be confused.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import psycopg
import pytest
from e2e_helpers import event, eventually
from gateway_process import GatewayProcess
from postgres_support import scratch_database, terminate_connections
from receiver import ReceiverThread, Reply

from gateway.store.owners import OwnerLocks

pytestmark = pytest.mark.slow

CONFIG = """
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
delivery: {{lease: 60s}}
sources:
  revicom:
    path: /callbacks/revicom
destinations:
  hook: {{type: webhook, url: "{url}/hook", timeout: 50s}}
routes:
  - name: all
    to: [hook]
"""


def post(gw: GatewayProcess, n: int) -> list[str]:
    events = [event() for _ in range(n)]
    answer = httpx.post(gw.url("/callbacks/revicom"), json=events, timeout=10)
    assert answer.status_code == 200 and answer.json()["accepted"] == n, answer.text
    return [e["message_uuid"] for e in events]


def in_flight(gw: GatewayProcess) -> list[tuple[str, float]]:
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        return list(
            db.execute("SELECT leased_by, lease_until FROM deliveries WHERE state = 'in_flight'")
        )


def resumes_at_once(
    gateway_factory: Callable[..., GatewayProcess], config: Callable[[str], str]
) -> None:
    """Kill -9 a gateway (`config` of the receiver's URL) with three deliveries in flight,
    start it again: all three are sent again well before their 60 s leases run out."""
    with ReceiverThread(Reply(200, stall=math.inf)) as rx:
        gw = gateway_factory(config(rx.url))
        uuids = post(gw, 3)
        rx.wait_for(3)  # all three held by the receiver: in flight, leased for 60 s
        gw.kill()
        rx.set_default(Reply(200))
        started = time.monotonic()
        gw.start()
        eventually(
            lambda: len(rx.requests) >= 6,
            timeout=20,
            what="the in-flight deliveries to be sent again",
        )
        took = time.monotonic() - started
        again = {json.loads(r.body)[0]["message_uuid"] for r in rx.requests[3:]}
        assert again == set(uuids)
        assert "resuming 3 events and deliveries left by a process that died" in gw.logs()
        assert took < 20, f"resumed after {took:.1f}s"
        assert gw.stop() == 0


def test_a_restart_after_kill_9_resumes_deliveries_in_flight_at_once(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    resumes_at_once(gateway_factory, lambda url: CONFIG.format(url=url))


def test_a_second_live_gateway_on_the_same_store_leaves_the_first_ones_leases_alone(
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    with ReceiverThread(Reply(200, stall=math.inf)) as rx:
        first = gateway_factory(CONFIG.format(url=rx.url))
        post(first, 2)
        rx.wait_for(2)
        held = in_flight(first)
        assert len(held) == 2
        second = gateway_factory(CONFIG.format(url=rx.url), workdir=tmp_path)  # ready: adopted
        assert in_flight(second) == held, "the live gateway's leases were taken"
        assert "resuming" not in second.logs()
        assert len(rx.requests) == 2


def test_owner_locks_prove_death_only_for_an_owner_whose_lock_is_free(tmp_path: Path) -> None:
    live, other = OwnerLocks(tmp_path), OwnerLocks(tmp_path)
    assert live.hold("host:1")
    assert not other.is_dead("host:1"), "a held lock is a live owner"
    assert not other.hold("host:1"), "the same owner id cannot be held twice"
    assert not other.is_dead("host:2"), "no file proves nothing"
    assert not live.is_dead("host:1"), "never dead to itself"

    crashed = OwnerLocks(tmp_path)
    assert crashed.hold("host:3")
    assert crashed._held is not None
    os.close(crashed._held[1])  # what the kernel does when the process dies
    assert other.is_dead("host:3")
    assert not (tmp_path / "host_3.lock").exists(), "the finder removes the dead owner's file"
    assert not other.is_dead("host:3"), "and proves it only once"

    live.release()
    assert not (tmp_path / "host_1.lock").exists()


async def test_events_intake_leased_to_a_dead_process_are_claimable_at_once(
    tmp_path: Path,
) -> None:
    from gateway.store import IncomingEvent, Lease
    from gateway.store.sqlite import SQLiteStore

    db = tmp_path / "gateway.db"
    crashed = SQLiteStore(db)
    await crashed.open()
    assert await crashed.adopt_owner("host:1", 1000.0) == 0
    await crashed.ingest("src", [IncomingEvent('{"a": 1}', "k1")], 1000.0, Lease("host:1", 1060.0))
    await crashed.committer.stop()  # the process dies: its lock goes, its file stays
    assert crashed._owners is not None and crashed._owners._held is not None
    os.close(crashed._owners._held[1])

    restarted = SQLiteStore(db)
    await restarted.open()
    try:
        assert await restarted.claim_events("host:2", 10, 60.0, 1001.0) == []  # still leased
        assert await restarted.adopt_owner("host:2", 1001.0) == 1
        [claimed] = await restarted.claim_events("host:2", 10, 60.0, 1001.0)
        assert claimed.raw == '{"a": 1}'
    finally:
        await restarted.close()


# -- PostgreSQL: session advisory locks of registered owners (`gateway.store.postgres_owners`) --


@pytest.fixture
def pg_url() -> Iterator[str]:
    with scratch_database() as url:
        yield url


def on_postgres(text: str, url: str) -> str:
    return text.replace("store: sqlite:///var/gateway.db", f"store: {url}")


def pg_in_flight(url: str) -> list[tuple[str, float]]:
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT leased_by, lease_until FROM deliveries WHERE state = 'in_flight' ORDER BY id"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_postgresql_a_restart_after_kill_9_resumes_deliveries_in_flight_at_once(
    gateway_factory: Callable[..., GatewayProcess], pg_url: str
) -> None:
    resumes_at_once(gateway_factory, lambda url: on_postgres(CONFIG.format(url=url), pg_url))


def test_postgresql_a_second_live_gateway_leaves_the_first_ones_leases_alone(
    gateway_factory: Callable[..., GatewayProcess], pg_url: str, tmp_path: Path
) -> None:
    with ReceiverThread(Reply(200, stall=math.inf)) as rx:
        text = on_postgres(CONFIG.format(url=rx.url), pg_url)
        (tmp_path / "first").mkdir()
        (tmp_path / "second").mkdir()
        first = gateway_factory(text, workdir=tmp_path / "first")
        post(first, 2)
        rx.wait_for(2)
        held = pg_in_flight(pg_url)
        assert len(held) == 2
        second = gateway_factory(text, workdir=tmp_path / "second")  # ready: adopted
        assert pg_in_flight(pg_url) == held, "the live gateway's leases were taken"
        assert "resuming" not in second.logs()
        assert len(rx.requests) == 2


async def test_postgresql_only_registered_owners_whose_lock_is_free_are_dead(pg_url: str) -> None:
    from gateway.store import IncomingEvent, Lease
    from gateway.store.postgres import PostgresStore
    from gateway.store.postgres_owners import OwnerSession

    live = PostgresStore(pg_url)
    await live.open()
    crashed = OwnerSession(live._conninfo)
    finder = PostgresStore(pg_url)
    await finder.open()
    try:
        assert await live.adopt_owner("host:1", 1000.0) == 0
        assert await crashed.hold("host:3")
        for i, owner in enumerate(("host:1", "host:3", "old:9")):  # old:9 never registered
            lease = Lease(owner, 1060.0)
            await live.ingest("src", [IncomingEvent(f'{{"a": {i}}}', f"k{i}")], 1000.0, lease)
        assert crashed._conn is not None
        await crashed._conn.close()  # the process dies: its session and lock go, its mark stays
        crashed._conn = None

        assert await finder.adopt_owner("host:2", 1001.0) == 1  # host:3's event only
        claimed = await finder.claim_events("host:2", 10, 60.0, 1001.0)
        assert [e.raw for e in claimed] == ['{"a": 1}']
        owners = finder._owners
        assert owners is not None
        assert await owners.registered() == {"host:1", "host:2"}, "the dead owner is forgotten"
    finally:
        await crashed.release()
        await live.close()
        await finder.close()
    second = PostgresStore(pg_url)
    await second.open()
    try:  # closing unregistered both live owners
        await second.adopt_owner("host:4", 1002.0)
        assert second._owners is not None
        assert await second._owners.registered() == {"host:4"}
    finally:
        await second.close()


async def test_postgresql_an_owner_takes_its_lock_again_after_losing_its_connection(
    pg_url: str,
) -> None:
    from gateway.store.postgres import PostgresStore
    from gateway.store.postgres_conn import split_url
    from gateway.store.postgres_owners import LOCK_KEY, OwnerSession

    migrated = PostgresStore(pg_url)
    await migrated.open()  # the schema
    await migrated.close()

    def lock_is_free(owner: str) -> bool:
        """Whether a session of its own can take `owner`'s lock (closing it lets go)."""
        with psycopg.connect(pg_url, autocommit=True) as probe:
            row = probe.execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})", (owner,)).fetchone()
        return bool(row and row[0])

    owner = OwnerSession(split_url(pg_url)[0], keepalive=0.05)
    try:
        assert await owner.hold("host:1")
        assert not lock_is_free("host:1")
        terminate_connections(pg_url)  # a PostgreSQL restart ends every session
        for _ in range(200):
            if not lock_is_free("host:1"):
                break
            await asyncio.sleep(0.02)
        assert not lock_is_free("host:1"), "the owner did not take its lock again"
        with psycopg.connect(pg_url) as db:
            marks = db.execute("SELECT key FROM gateway_marks WHERE key LIKE 'owner:%'").fetchall()
        assert marks == [("owner:host:1",)]
    finally:
        await owner.release()
