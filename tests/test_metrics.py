"""`/metrics` of a real gateway: exact callback, request and routing counts after known traffic,
queue gauges for a paused destination, and counts summed over two Sanic worker processes.

Each test posts to its own source, so exact values do not depend on test order.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import event as delivered
from e2e_helpers import status
from gateway_process import GatewayProcess, free_port
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

TOKEN = "metrics-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
AUTH = ("revicom", "metrics-password-1")
JSON = {"Content-Type": "application/json"}

CONFIG = f"""
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
admin: {{token: {TOKEN}}}
sources:
  revicom:
    path: /callbacks/revicom
    auth: {{basic: {{username: {AUTH[0]}, password: {AUTH[1]}}}}}
  strict:
    path: /callbacks/strict
    on_invalid: reject
  queued:
    path: /callbacks/queued
destinations:
  archive: {{type: file, path: var/archive.jsonl}}
  crm: {{type: webhook, url: "http://127.0.0.1:{free_port()}/never-reached"}}
routes:
  - name: delivered
    match: {{callback_event: delivered}}
    to: [archive]
  - name: clicks
    match: {{callback_event: click}}
    to: [crm]
"""


def click() -> dict[str, Any]:
    return {
        "message_uuid": str(uuid.uuid4()),
        "channel_type": "SMS",
        "callback_event": "click",
        "url": "https://example.com/offer",
        "short_url": "https://s.example/AbC12",
        "click_time": "2020-10-16T19:02:11Z",
    }


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: GatewayProcess) -> Samples:
    """Every sample of one scrape, keyed by (sample name, labels)."""
    answer = httpx.get(f"{gw.base}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[Any], float]:
    """Samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {lb: v for (n, lb), v in samples.items() if n == name and want <= lb}


def until(gw: GatewayProcess, ready: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Scrape until `ready` holds (background work such as routing is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(gw)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)  # polling for an outcome, bounded by the deadline


def post(gw: GatewayProcess, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{gw.base}{path}", content=json.dumps(body), headers=JSON, timeout=10, **kw)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(CONFIG, tmp_path_factory.mktemp("metrics")).start()
    yield proc
    proc.kill()


def test_callbacks_and_requests_are_counted_by_source_event_outcome_and_status(gw):
    first, second, status_read = delivered(), delivered(), status("read")
    invalid = {"callback_event": "delivered", "status": "delivered"}  # no message_uuid
    assert post(gw, "/callbacks/revicom", [first, second, status_read], auth=AUTH).json() == {
        "accepted": 3,
        "duplicates": 0,
        "quarantined": 0,
    }
    assert post(gw, "/callbacks/revicom", [first, invalid], auth=AUTH).json() == {
        "accepted": 0,
        "duplicates": 1,
        "quarantined": 1,
    }
    assert post(gw, "/callbacks/revicom", [first], auth=("revicom", "wrong")).status_code == 401
    assert post(gw, "/callbacks/strict", [delivered(), invalid]).status_code == 422

    samples = until(
        gw,
        lambda s: (
            value(s, "callback_gateway_events_routed_total", source="revicom", state="unmatched")
            == 1
        ),
    )
    callbacks = "callback_gateway_callbacks_total"
    assert matching(samples, callbacks, source="revicom") == {
        frozenset({"source": "revicom", "event": e, "outcome": o}.items()): n
        for e, o, n in [
            ("delivered", "accepted", 2.0),
            ("read", "accepted", 1.0),
            ("delivered", "duplicate", 1.0),
            ("delivered", "quarantined", 1.0),
        ]
    }
    # A rejected request stores nothing: every element in it counts as rejected.
    assert matching(samples, callbacks, source="strict") == {
        frozenset({"source": "strict", "event": "delivered", "outcome": "rejected"}.items()): 2.0
    }
    requests = "callback_gateway_requests_total"
    assert value(samples, requests, source="revicom", status="200") == 2
    assert value(samples, requests, source="revicom", status="401") == 1
    assert value(samples, requests, source="strict", status="422") == 1
    routed = "callback_gateway_events_routed_total"
    assert value(samples, routed, source="revicom", state="routed") == 2
    assert value(samples, routed, source="revicom", state="unmatched") == 1
    assert value(samples, "callback_gateway_ack_seconds_count", source="revicom") == 2
    assert value(samples, "callback_gateway_quarantined_events") == 1


def test_a_paused_destination_shows_its_queue_depth_and_oldest_pending_age(gw):
    paused = httpx.post(
        f"{gw.base}/admin/destinations/crm/pause",
        headers=ADMIN,
        json={"reason": "maintenance"},
        timeout=10,
    )
    assert paused.status_code == 200
    started = time.time()
    for _ in range(3):
        assert post(gw, "/callbacks/queued", [click()]).status_code == 200

    samples = until(
        gw,
        lambda s: value(s, "callback_gateway_queue_depth", destination="crm", state="pending") == 3,
    )
    assert value(samples, "callback_gateway_queue_depth", destination="crm", state="pending") == 3
    age = value(samples, "callback_gateway_oldest_pending_seconds", destination="crm")
    assert age is not None and 0 <= age <= time.time() - started + 1
    assert (
        value(samples, "callback_gateway_events_routed_total", source="queued", state="routed") == 3
    )
    # Nothing was tried while paused.
    assert matching(samples, "callback_gateway_queue_depth", destination="crm", state="dead") in (
        {},
        {frozenset({"destination": "crm", "state": "dead"}.items()): 0.0},
    )


def test_delivery_attempts_are_counted_by_destination_and_outcome(gw):
    assert post(gw, "/callbacks/revicom", [delivered()], auth=AUTH).status_code == 200
    archive = gw.workdir / "var" / "archive.jsonl"

    def lines() -> int:
        return len(archive.read_text().splitlines()) if archive.exists() else 0

    counter = "callback_gateway_deliveries_total"
    samples = until(
        gw,
        lambda s: (
            lines() >= 1
            and value(s, counter, destination="archive", outcome="delivered") == lines()
        ),
    )
    assert value(samples, counter, destination="archive", outcome="delivered") == lines()
    assert value(samples, "callback_gateway_attempt_seconds_count", destination="archive") == (
        lines()
    )
    assert not matching(samples, counter, destination="crm")  # paused or never routed to


WORKERS_CONFIG = """
server: {host: 127.0.0.1, workers: 2}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
"""


def test_counts_from_two_worker_processes_are_summed(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    gw = gateway_factory(WORKERS_CONFIG, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    # A fresh connection per request, so the kernel hands them to either worker. Which worker
    # accepts is the kernel's choice, so send until both have written counts (a worker adds
    # its counts to the shared files at most FLUSH_DELAY after counting; bounded), at least 20.
    limits = httpx.Limits(max_keepalive_connections=0)

    def writers() -> set[str]:
        return {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}

    sent = 0
    deadline = time.monotonic() + 30
    with httpx.Client(limits=limits, timeout=10, headers=JSON) as client:
        while sent < 20 or (len(writers()) < 2 and time.monotonic() < deadline):
            url = f"{gw.base}/callbacks/revicom"
            assert client.post(url, content=json.dumps([delivered()])).status_code == 200
            sent += 1
    assert len(writers()) == 2, f"one worker took all {sent} connections: {writers()}"
    # Whichever worker answers the scrape reports both; the other's last counts arrive
    # within FLUSH_DELAY.
    total = "callback_gateway_callbacks_total"
    labels = {"source": "revicom", "event": "delivered", "outcome": "accepted"}
    counted: tuple[float | None, float | None] = (None, None)
    while time.monotonic() < deadline + 10:
        samples = scrape(gw)
        counted = (
            value(samples, total, **labels),
            value(samples, "callback_gateway_requests_total", source="revicom", status="200"),
        )
        if counted == (sent, sent):
            break
    assert counted == (sent, sent)


def test_the_store_size_and_its_free_disk_space_are_gauges(gw):
    samples = scrape(gw)
    db = gw.workdir / "var"
    size = value(samples, "callback_gateway_store_bytes")
    free = value(samples, "callback_gateway_store_free_bytes")
    on_disk = sum(p.stat().st_size for p in db.glob("*.db*") if not p.name.endswith("-shm"))
    assert size is not None and 0 < size <= on_disk * 2
    assert free is not None and free > 0
