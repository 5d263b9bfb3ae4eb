"""Retention against a real gateway (the "Done when" of issue 14): with every window at 1s, a
delivered event, its delivery and a quarantined event disappear from the CLI's listings and the
store within seconds, while a delivery pending for a paused destination and the pause survive
any number of passes and are delivered after `resume`; a resend of a purged event is still a
duplicate. And ingesting the same volume twice with a purge between grows the files much less
the second time.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, event, eventually
from gateway_process import GatewayProcess
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

TOKEN = "retention-admin-token-0123"
SHORT = "retention: {events: 1s, delivered: 1s, dead: 1s, quarantined: 1s, interval: 1s}"


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver(Reply(200, b"ok")) as receiver:
        yield receiver


def cli(gw: GatewayProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(gw.config_path)],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def post(gw: GatewayProcess, *events: dict) -> dict:
    answer = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps(list(events)),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def stored(gw: GatewayProcess, sql: str, *args: object) -> int:
    conn = sqlite3.connect(f"file:{gw.workdir / 'var' / 'gateway.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def test_retention_removes_what_is_done_and_keeps_a_paused_queue(
    gateway_factory: Callable[..., GatewayProcess], rx: Receiver
) -> None:
    gw = gateway_factory(f"""
{SHORT}
admin: {{token: {TOKEN}}}
sources:
  revicom: {{path: /callbacks/revicom}}
destinations:
  crm: {{type: webhook, url: "{rx.url}/crm"}}
  held: {{type: webhook, url: "{rx.url}/held"}}
routes:
  - match: {{channel_type: SMS}}
    to: [crm]
  - match: {{channel_type: VIBER}}
    to: [held]
""")
    # Through the admin API: the serving process's engine knows at once (the CLI's pause
    # reaches a running engine on its next pause poll).
    paused = httpx.post(
        f"{gw.base}/admin/destinations/held/pause",
        json={"reason": "maintenance"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert paused.status_code == 200, paused.text
    done, waiting = event(channel_type="SMS"), event(channel_type="VIBER")
    broken = {"message_uuid": "broken-1", "callback_event": "delivered"}  # fields missing
    assert post(gw, done, waiting, broken) == {"accepted": 2, "duplicates": 0, "quarantined": 1}

    def listed(*args: str) -> list[dict]:
        return json.loads(cli(gw, *args, "--json"))

    # Delivered (the receiver has it), then gone with its event, from the listings and the
    # store (with 1s windows it may already be gone from the listing by the first look).
    eventually(
        lambda: [r for r in rx.requests if r.path == "/crm"],
        timeout=15,
        what="the crm delivery delivered",
    )
    eventually(
        lambda: not [d for d in listed("deliveries", "list") if d["destination"] == "crm"],
        timeout=15,
        what="the delivered delivery purged",
    )
    eventually(lambda: listed("quarantine", "list") == [], timeout=15, what="quarantine purged")
    for uuid in (done["message_uuid"], "broken-1"):
        assert stored(gw, "SELECT COUNT(*) FROM events WHERE message_uuid = ?", uuid) == 0
    assert stored(gw, "SELECT COUNT(*) FROM attempts") == 0

    # The paused queue survives passes of the schedule and of the CLI, and so does the pause.
    for _ in range(3):
        removed = json.loads(cli(gw, "purge", "--json"))
        assert set(removed) >= {"events", "delivered", "quarantined", "dedupe_keys"}
    [pending] = listed("deliveries", "list")
    assert (pending["destination"], pending["state"]) == ("held", "pending")
    assert "maintenance" in cli(gw, "destinations", "list")
    assert not [r for r in rx.requests if r.path == "/held"]

    # A resend of the purged event is still a duplicate (dedupe keys are kept 25h).
    assert post(gw, done) == {"accepted": 0, "duplicates": 1, "quarantined": 0}

    cli(gw, "destinations", "resume", "held")
    eventually(
        lambda: [r for r in rx.requests if r.path == "/held"],
        timeout=15,
        what="the held delivery sent after resume",
    )
    [sent] = [r for r in rx.requests if r.path == "/held"]
    assert json.loads(sent.body)[0]["message_uuid"] == waiting["message_uuid"]
    eventually(
        lambda: not listed("deliveries", "list"),
        timeout=15,
        what="the resumed delivery purged once delivered",
    )
    assert gw.stop() == 0


def _files(gw: GatewayProcess) -> int:
    var = gw.workdir / "var"
    return sum(p.stat().st_size for p in var.glob("gateway.db*") if p.is_file())


def test_the_second_fill_after_a_purge_grows_the_files_much_less(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory("""
retention: {events: 1s, delivered: 1s, dead: 1s, quarantined: 1s, interval: 1h}
sources:
  revicom: {path: /callbacks/revicom}
""")
    pad = "p" * 400

    def fill(tag: str) -> int:
        before = _files(gw)
        for n in range(40):
            events = [event(message_uuid=f"{tag}-{n}-{i}", note=pad) for i in range(100)]
            assert post(gw, *events)["accepted"] == 100
        eventually(
            lambda: stored(gw, "SELECT COUNT(*) FROM events WHERE state = 'received'") == 0,
            timeout=30,
            what="every event routed",
        )
        return _files(gw) - before

    first = fill("a")
    eventually(
        lambda: (
            json.loads(cli(gw, "purge", "--json"))["events"] >= 0
            and stored(gw, "SELECT COUNT(*) FROM events") == 0
        ),
        timeout=15,
        what="purged",
    )
    second = fill("b")
    assert second < first / 2, (first, second)
    assert gw.stop() == 0
