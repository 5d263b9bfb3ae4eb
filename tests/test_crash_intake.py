"""Crash safety of intake: whatever got a 2xx is in the store after a `kill -9` and a restart.

The server is a real subprocess; SIGKILL gives it no chance to flush anything, so an event
found after the restart was durably committed before its acknowledgement left the process.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from typing import Any

import httpx
import pytest
from e2e_helpers import body, event
from gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

AUTH = ("revicom", "crash-test")
JSON = {"Content-Type": "application/json"}
PATH = "/callbacks/revicom"

# A route to a file destination keeps the router and delivery engine busy while we kill.
CONFIG = """
server: {host: 127.0.0.1}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
    auth:
      basic: {username: revicom, password: crash-test}
destinations:
  archive: {type: file, path: var/events.jsonl}
routes:
  - name: archive
    to: [archive]
"""

Factory = Callable[..., GatewayProcess]


def stored_uuids(gw: GatewayProcess) -> list[str]:
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        return [r[0] for r in db.execute("SELECT message_uuid FROM events")]


def test_each_acknowledged_callback_survives_a_kill_right_after_its_2xx(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory(CONFIG)
    acked: list[str] = []
    for _ in range(3):
        ev = event()
        answer = httpx.post(gw.url(PATH), content=body(ev), headers=JSON, auth=AUTH, timeout=10)
        gw.kill()
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 1
        acked.append(ev["message_uuid"])
        gw.start()
        assert sorted(stored_uuids(gw)) == sorted(acked)


def test_a_batch_of_concurrent_callbacks_survives_a_kill_after_the_last_2xx(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory(CONFIG)
    events = [event() for _ in range(50)]

    async def post_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(auth=AUTH, timeout=10, limits=limits) as ac:
            answers = await asyncio.gather(
                *(ac.post(gw.url(PATH), content=body(ev), headers=JSON) for ev in events)
            )
            gw.kill()  # before the client even closes its connections
            return answers

    answers = asyncio.run(post_all())
    assert [a.status_code for a in answers] == [200] * 50
    assert sum(a.json()["accepted"] for a in answers) == 50
    gw.start()
    assert sorted(stored_uuids(gw)) == sorted(ev["message_uuid"] for ev in events)


def test_a_kill_in_the_middle_of_a_burst_loses_no_acknowledged_callback(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory(CONFIG)
    events = [event() for _ in range(60)]
    acked: list[str] = []

    async def post(ac: httpx.AsyncClient, ev: dict[str, Any]) -> None:
        try:
            answer = await ac.post(gw.url(PATH), content=body(ev), headers=JSON)
        except httpx.HTTPError:
            return  # not acknowledged: the provider would resend it
        if answer.status_code == 200:
            acked.append(ev["message_uuid"])
            if len(acked) == 20:
                gw.kill()  # while the other requests are still in flight

    async def burst() -> None:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(auth=AUTH, timeout=10, limits=limits) as ac:
            await asyncio.gather(*(post(ac, ev) for ev in events))

    asyncio.run(burst())
    assert len(acked) >= 20
    gw.start()
    assert set(acked) <= set(stored_uuids(gw))


def test_a_resend_after_a_restart_is_still_a_duplicate(gateway_factory: Factory) -> None:
    gw = gateway_factory(CONFIG)
    ev = event()
    first = httpx.post(gw.url(PATH), content=body(ev), headers=JSON, auth=AUTH, timeout=10)
    gw.kill()
    assert first.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    gw.start()
    again = httpx.post(gw.url(PATH), content=body(ev), headers=JSON, auth=AUTH, timeout=10)
    assert again.status_code == 200
    assert again.json() == {"accepted": 0, "duplicates": 1, "quarantined": 0}
    assert stored_uuids(gw) == [ev["message_uuid"]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_exits_0_after_a_clean_shutdown_signal(
    gateway_factory: Factory, sig: signal.Signals
) -> None:
    gw = gateway_factory(CONFIG)
    ev = event()
    answer = httpx.post(gw.url(PATH), content=body(ev), headers=JSON, auth=AUTH, timeout=10)
    assert answer.status_code == 200
    if sig == signal.SIGTERM:
        code = gw.stop()
    else:
        assert gw.proc is not None
        gw.proc.send_signal(sig)
        code = gw.proc.wait(30)
    assert code == 0, gw.logs()
    assert "Traceback" not in gw.logs()
    assert stored_uuids(gw) == [ev["message_uuid"]]


def test_a_store_that_cannot_commit_gets_503_and_no_acknowledgement(
    gateway_factory: Factory,
) -> None:
    gw = gateway_factory(CONFIG)
    ev = event()
    # Another process holds the write lock longer than the gateway's busy timeout (5 s).
    with closing(
        sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=1, isolation_level=None)
    ) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        answer = httpx.post(gw.url(PATH), content=body(ev), headers=JSON, auth=AUTH, timeout=30)
        blocker.execute("ROLLBACK")
    assert answer.status_code == 503, answer.text
    assert set(answer.json()) == {"error", "detail"}
    assert ev["message_uuid"] not in stored_uuids(gw)
    # The provider resends later; now it is stored and acknowledged.
    again = httpx.post(gw.url(PATH), content=body(ev), headers=JSON, auth=AUTH, timeout=30)
    assert again.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert stored_uuids(gw) == [ev["message_uuid"]]
