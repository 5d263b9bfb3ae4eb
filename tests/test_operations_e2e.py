"""The "destination down" runbook of docs/operations.md, run against a real gateway: the queue
grows in /metrics, deliveries dead-letter, the operator pauses, replays with the CLI exactly as
documented, resumes, and everything arrives with its original delivery id; SIGTERM then exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, event, eventually
from gateway_process import GatewayProcess
from prometheus_client.parser import text_string_to_metric_families
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

TOKEN = "ops-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver(Reply(503, b"maintenance")) as receiver:
        yield receiver


def gauge(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.base}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_destination_down_runbook(gateway_factory: Callable[..., GatewayProcess], rx) -> None:
    gw = gateway_factory(f"""
server: {{host: 127.0.0.1}}
admin: {{token: {TOKEN}}}
sources:
  revicom: {{path: /callbacks/revicom}}
destinations:
  crm: {{type: webhook, url: "{rx.url}/hook", retry: {{attempts: 2, initial: 100ms}}}}
routes:
  - to: [crm]
""")
    events = [event() for _ in range(3)]
    answer = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps(events),
        headers={"Content-Type": "application/json"},
    )
    assert answer.json()["accepted"] == 3

    # The receiver answers 503: two tries each, then dead letters, visible in /metrics.
    eventually(
        lambda: gauge(gw, "callback_gateway_queue_depth", destination="crm", state="dead") == 3,
        what="3 dead letters",
    )
    assert gauge(gw, "callback_gateway_deliveries_total", destination="crm", outcome="retry") == 3
    assert gauge(gw, "callback_gateway_deliveries_total", destination="crm", outcome="dead") == 3
    dead = json.loads(
        cli(gw, "deliveries", "list", "-c", "gateway.yaml", "--state", "dead", "--json").stdout
    )
    assert {d["last_error"] for d in dead} == {"HTTP 503: maintenance (gave up after 2 tries)"}

    # Pause while the receiver is fixed; replay the dead letters; they wait, pending.
    httpx.post(
        f"{gw.base}/admin/destinations/crm/pause", headers=ADMIN, json={"reason": "crm maintenance"}
    ).raise_for_status()
    rx.default = Reply(200)
    tries_before = len(rx.requests)
    replayed = cli(gw, "replay", "-c", "gateway.yaml", "--state", "dead", "--destination", "crm")
    assert replayed.returncode == 0
    eventually(
        lambda: gauge(gw, "callback_gateway_queue_depth", destination="crm", state="pending") == 3,
        what="3 pending",
    )
    assert gauge(gw, "callback_gateway_oldest_pending_seconds", destination="crm") > 0
    assert len(rx.requests) == tries_before

    httpx.post(f"{gw.base}/admin/destinations/crm/resume", headers=ADMIN).raise_for_status()
    eventually(
        lambda: (
            gauge(gw, "callback_gateway_deliveries_total", destination="crm", outcome="delivered")
            == 3
        ),
        what="3 delivered",
    )
    delivered_ids = {r.headers["webhook-id"] for r in rx.requests[tries_before:]}
    assert delivered_ids == {d["id"] for d in dead}

    assert gw.stop() == 0
    assert "Traceback" not in gw.logs()
