"""Crash safety of delivery: a real gateway subprocess, a real receiver, `kill -9` mid-flight.

Every event answered 2xx must reach the receiver at least once after a crash and a restart;
repeats are allowed (at-least-once) and reported, and carry the same ``webhook-id``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing

import httpx
import pytest
from e2e_helpers import event
from gateway_process import GatewayProcess
from receiver import ReceiverThread, Reply

pytestmark = pytest.mark.slow

AUTH = ("revicom", "crash-test")
PATH = "/callbacks/revicom"
Factory = Callable[..., GatewayProcess]


def config(url: str) -> str:
    # A short lease so the restarted gateway takes over the crashed one's work quickly;
    # the webhook timeout must stay below it.
    return f"""
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
delivery: {{lease: 2s, concurrency: 4}}
retry: {{attempts: 20, initial: 100ms, max_interval: 500ms}}
sources:
  revicom:
    path: {PATH}
    auth:
      basic: {{username: revicom, password: crash-test}}
destinations:
  hook: {{type: webhook, url: "{url}/hook", timeout: 1s}}
routes:
  - name: all
    to: [hook]
"""


def post_events(gw: GatewayProcess, n: int, batch: int = 10) -> list[str]:
    uuids = []
    for start in range(0, n, batch):
        events = [event() for _ in range(min(batch, n - start))]
        answer = httpx.post(gw.url(PATH), json=events, auth=AUTH, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == len(events)
        uuids += [e["message_uuid"] for e in events]
    return uuids


def received(rx: ReceiverThread, since: int = 0) -> Counter[str]:
    """message_uuid -> how many requests (from the `since`-th on) carried it."""
    return Counter(json.loads(r.body)[0]["message_uuid"] for r in rx.requests[since:])


def wait_until_all_received(
    rx: ReceiverThread, uuids: list[str], since: int = 0, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not set(uuids) <= set(received(rx, since)):
        if time.monotonic() > deadline:
            missing = set(uuids) - set(received(rx, since))
            raise AssertionError(f"{len(missing)} accepted events never reached the receiver")
        time.sleep(0.05)  # polling for an outcome, not timing


def wait_until_routed(gw: GatewayProcess, n: int, timeout: float = 20) -> None:
    """Until `n` deliveries exist: this file tests delivery, so the kill must not catch the
    router mid-batch (a crashed router's events wait for its own, longer lease)."""
    deadline = time.monotonic() + timeout
    while sum(delivery_states(gw).values()) < n:
        assert time.monotonic() < deadline, "events were not routed"
        time.sleep(0.05)  # polling for an outcome, not timing


def wait_until_delivered(gw: GatewayProcess, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while delivery_states(gw) != {"delivered": n}:
        assert time.monotonic() < deadline, f"not all delivered: {delivery_states(gw)}"
        time.sleep(0.05)  # polling for an outcome, not timing


def delivery_states(gw: GatewayProcess) -> dict[str, int]:
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))


def ids_are_stable(rx: ReceiverThread) -> None:
    ids: dict[str, set[str]] = {}
    for r in rx.requests:
        ids.setdefault(json.loads(r.body)[0]["message_uuid"], set()).add(r.headers["webhook-id"])
    assert all(len(v) == 1 for v in ids.values()), "a repeat carried a different webhook-id"


def test_kill_9_while_a_slow_receiver_holds_deliveries_loses_none(
    gateway_factory: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    with ReceiverThread(Reply(200, stall=0.4)) as rx:
        gw = gateway_factory(config(rx.url))
        uuids = post_events(gw, 40)
        wait_until_routed(gw, 40)
        rx.wait_for(6)  # several tries answered or still held by the slow receiver
        gw.kill()
        before = len(rx.requests)
        rx.set_default(Reply(200))
        gw.start()
        wait_until_all_received(rx, uuids)
        wait_until_delivered(gw, len(uuids))
        assert gw.stop() == 0
        counts = received(rx)
        ids_are_stable(rx)
    duplicates = sum(n - 1 for n in counts.values())
    with capsys.disabled():
        print(
            f"\n[crash-delivery] kill -9 after {before} requests: {len(uuids)} events,"
            f" all delivered, {duplicates} delivered twice (at-least-once)"
        )
    assert delivery_states(gw) == {"delivered": len(uuids)}
    assert duplicates <= 4 + 4  # at most what was in flight at the kill (concurrency 4)


def test_kill_9_while_the_receiver_is_down_then_restart_delivers_everything(
    gateway_factory: Factory,
) -> None:
    with ReceiverThread(Reply(503)) as rx:
        gw = gateway_factory(config(rx.url))
        uuids = post_events(gw, 20)
        wait_until_routed(gw, 20)
        rx.wait_for(25)  # every delivery failed at least once and is scheduled for a retry
        gw.kill()
        rx.set_default(Reply(200))
        failed = len(rx.requests)
        gw.start()
        wait_until_all_received(rx, uuids, since=failed)
        wait_until_delivered(gw, len(uuids))
        assert gw.stop() == 0
    assert delivery_states(gw) == {"delivered": len(uuids)}


def test_sigterm_with_a_stalled_receiver_exits_cleanly_and_loses_nothing(
    gateway_factory: Factory,
) -> None:
    with ReceiverThread(Reply(200, stall=math.inf)) as rx:
        gw = gateway_factory(config(rx.url))
        uuids = post_events(gw, 8)
        wait_until_routed(gw, 8)
        rx.wait_for(4)  # all four slots held by the stalled receiver
        t0 = time.monotonic()
        assert gw.stop() == 0
        assert time.monotonic() - t0 < 10  # tries end at their 1s timeout, within the grace
        states = delivery_states(gw)
        assert "in_flight" not in states and states.get("pending") == len(uuids)
        rx.set_default(Reply(200))
        stalled = len(rx.requests)
        gw.start()
        wait_until_all_received(rx, uuids, since=stalled)
        wait_until_delivered(gw, len(uuids))
        assert gw.stop() == 0
    assert delivery_states(gw) == {"delivered": len(uuids)}
