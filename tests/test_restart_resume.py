"""A gateway restarted after a crash resumes its own leased work at once (SQLite owner locks,
`gateway.store.owners`), not when the leases expire; a live gateway's leases are never taken.

The lease is 60 s so that "at once" and "after the lease" cannot be confused.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from e2e_helpers import event, eventually
from gateway_process import GatewayProcess
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


def test_a_restart_after_kill_9_resumes_deliveries_in_flight_at_once(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    with ReceiverThread(Reply(200, stall=math.inf)) as rx:
        gw = gateway_factory(CONFIG.format(url=rx.url))
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
