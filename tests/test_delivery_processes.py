"""Delivery in processes of its own (``delivery.processes``, ``run --role``): a real gateway,
a real receiver, every acknowledged event delivered exactly once, no process left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from e2e_helpers import event, eventually
from gateway_process import GatewayProcess
from receiver import ReceiverThread

pytestmark = pytest.mark.slow

PATH = "/callbacks/revicom"
Factory = Callable[..., GatewayProcess]


def config(url: str, processes: int = 0, store: str = "sqlite:///var/gateway.db") -> str:
    return f"""
server: {{host: 127.0.0.1}}
store: {store}
delivery: {{processes: {processes}}}
sources:
  revicom: {{path: {PATH}}}
destinations:
  hook: {{type: webhook, url: "{url}/hook", timeout: 2s}}
routes:
  - name: all
    to: [hook]
"""


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def post(gw: GatewayProcess, n: int) -> list[str]:
    uuids = []
    for _ in range(n // 10):
        events = [event() for _ in range(10)]
        answer = httpx.post(gw.url(PATH), json=events, timeout=10)
        assert answer.status_code == 200, answer.text
        uuids += [e["message_uuid"] for e in events]
    return uuids


def delivered_uuids(rx: ReceiverThread, n: int) -> Counter[str]:
    return Counter(json.loads(r.body)[0]["message_uuid"] for r in rx.wait_for(n, timeout=30))


def test_delivery_processes_deliver_everything_once_and_stop_with_the_gateway(
    gateway_factory: Factory,
):
    with ReceiverThread() as rx:
        gw = gateway_factory(config(rx.url, processes=2))
        assert gw.proc is not None
        kids = children(gw.proc.pid)
        assert len(kids) == 2, gw.logs()
        uuids = post(gw, 60)
        got = delivered_uuids(rx, 60)
        assert set(got) == set(uuids)
        assert max(got.values()) == 1
        assert gw.stop() == 0, gw.logs()
        assert not [p for p in kids if Path(f"/proc/{p}").exists()]
    assert "delivery in 2 process(es)" in gw.logs()


def test_a_killed_delivery_process_is_started_again(gateway_factory: Factory):
    with ReceiverThread() as rx:
        gw = gateway_factory(config(rx.url, processes=1))
        assert gw.proc is not None
        (first,) = children(gw.proc.pid)
        os.kill(first, signal.SIGKILL)
        kids = eventually(lambda: [p for p in children(gw.proc.pid) if p != first], 30,
                          "a new delivery process")  # fmt: skip
        uuids = post(gw, 20)
        assert set(delivered_uuids(rx, 20)) == set(uuids)
        assert gw.stop() == 0
        assert not Path(f"/proc/{kids[0]}").exists()


def pending(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        row = c.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()
    return int(row[0])


def states(db: Path) -> Counter[tuple[str, bool]]:
    """Events by (state, leased)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
        rows = c.execute("SELECT state, leased_by IS NOT NULL FROM events").fetchall()
    return Counter((state, bool(leased)) for state, leased in rows)


def test_the_serving_process_routes_but_leaves_delivery_to_its_delivery_processes(
    gateway_factory: Factory, tmp_path: Path
):
    """With ``delivery.processes`` the serving process routes what it received (from memory)
    and sends nothing: while its only child is stopped, the events are routed and their
    deliveries wait in the store; once the child runs again it delivers every one, once."""
    db = tmp_path / "var" / "gateway.db"
    with ReceiverThread() as rx:
        gw = gateway_factory(config(rx.url, processes=1))
        assert gw.proc is not None
        (child,) = children(gw.proc.pid)
        os.kill(child, signal.SIGSTOP)  # our own gateway's child, resumed below
        try:
            uuids = post(gw, 20)
            eventually(lambda: pending(db) == 20, what="routed by the serving process")
            assert states(db) == {("routed", False): 20}
            assert rx.requests == []
        finally:
            os.kill(child, signal.SIGCONT)
        got = delivered_uuids(rx, 20)
        assert set(got) == set(uuids) and max(got.values()) == 1
        assert gw.stop() == 0, gw.logs()


def test_a_delivery_process_routes_what_the_store_holds(tmp_path: Path):
    """``--role delivery`` alone (no HTTP anywhere) routes the events stored unleased, as a
    serving process with ``delivery.processes`` leaves them, and delivers them."""
    from gateway.store import IncomingEvent
    from gateway.store.sqlite import SQLiteStore

    elements = [event() for _ in range(10)]

    async def store_events() -> None:
        store = SQLiteStore(tmp_path / "var" / "gateway.db")
        await store.open()
        items = [
            IncomingEvent(json.dumps(e), f"key-{e['message_uuid']}", e["message_uuid"], "delivered")
            for e in elements
        ]
        result = await store.ingest("revicom", items, time.time(), None)
        assert result.accepted == 10
        await store.close()

    with ReceiverThread() as rx:
        (tmp_path / "gateway.yaml").write_text(config(rx.url))
        asyncio.run(store_events())
        with open(tmp_path / "delivery.log", "ab") as log:
            delivery = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", "gateway.yaml",
                 "--role", "delivery"],
                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            got = delivered_uuids(rx, 10)
            assert set(got) == {e["message_uuid"] for e in elements}
            assert max(got.values()) == 1
        finally:
            delivery.send_signal(signal.SIGTERM)
            assert delivery.wait(30) == 0, (tmp_path / "delivery.log").read_text()
    assert states(tmp_path / "var" / "gateway.db") == {("routed", False): 10}


def test_roles_intake_and_delivery_run_separately(tmp_path: Path):
    """``--role intake`` routes but delivers nothing; a ``--role delivery`` process (no HTTP)
    delivers what it queued, and exits 0 on SIGTERM."""
    with ReceiverThread() as rx:
        gw = GatewayProcess(config(rx.url), tmp_path, args=["--role", "intake"])
        try:
            gw.start()
            uuids = post(gw, 10)
            eventually(lambda: pending(tmp_path / "var" / "gateway.db") == 10, what="routed")
            assert rx.requests == []
            with open(tmp_path / "delivery.log", "ab") as log:
                delivery = subprocess.Popen(
                    [sys.executable, "-m", "gateway", "run", "-c", str(gw.config_path),
                     "--role", "delivery"],
                    cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            try:
                assert set(delivered_uuids(rx, 10)) == set(uuids)
            finally:
                delivery.send_signal(signal.SIGTERM)
                assert delivery.wait(30) == 0, (tmp_path / "delivery.log").read_text()
        finally:
            assert gw.stop() == 0
