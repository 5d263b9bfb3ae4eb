"""The admin HTTP API of a real gateway: bearer auth, deliveries, dead-letter replay, quarantine,
pause/resume, reload; and the CLI reading the same store agrees with it.

One gateway with ``admin.token`` (webhooks to a real loopback receiver, a file destination) and
one without, started side by side and shared by the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, eventually, status
from gateway_process import GatewayProcess
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

TOKEN = "admin-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}

CONFIG = """
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
admin: {{token: {token}}}
sources:
  revicom:
    path: /callbacks/revicom
  orders:
    path: /callbacks/orders
    format: json
    options: {{required: [/id, {required}], event: /type}}
destinations:
  crm: {{type: webhook, url: "{rx}/crm", retry: {{attempts: 2, initial: 50ms}}}}
  ops: {{type: webhook, url: "{rx}/ops"}}
  orders-file: {{type: file, path: var/orders.jsonl}}
routes:
  - name: to-crm
    match: {{callback_event: delivered}}
    to: [crm]
  - name: to-ops
    match: {{callback_event: read}}
    to: [ops]
  - name: orders
    match: {{id: {{exists: true}}}}
    to: [orders-file]
"""


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, rx: Receiver
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    admin = GatewayProcess(
        CONFIG.format(token=TOKEN, rx=rx.url, required="/type"), tmp_path_factory.mktemp("admin")
    )
    plain = GatewayProcess(
        "sources: {revicom: {path: /callbacks/revicom}}\n", tmp_path_factory.mktemp("no-admin")
    )
    with ThreadPoolExecutor(2) as pool:  # start both at once: startup dominates the run time
        started = list(pool.map(GatewayProcess.start, [admin, plain]))
    yield admin, plain
    for gw in started:
        gw.kill()


@pytest.fixture(scope="module")
def gw(servers: tuple[GatewayProcess, GatewayProcess]) -> GatewayProcess:
    return servers[0]


@pytest.fixture(scope="module")
def api(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{gw.base}/admin", headers=BEARER, timeout=10) as client:
        yield client


def post(gw: GatewayProcess, path: str, *elements: Any) -> dict[str, Any]:
    answer = httpx.post(f"{gw.base}{path}", content=json.dumps(list(elements)), headers=JSON)
    assert answer.status_code == 200, answer.text
    return answer.json()


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The `callback-gateway` CLI, run where the gateway runs (relative store path)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(gw.config_path)],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )


def deliveries_for(api: httpx.Client, message_uuid: str) -> list[dict[str, Any]]:
    answer = api.get("/deliveries", params={"message_uuid": message_uuid})
    assert answer.status_code == 200
    return answer.json()


def test_the_admin_api_is_off_without_a_token(servers):
    _, plain = servers
    for method, path in [
        ("GET", "/admin/deliveries"),
        ("POST", "/admin/replay"),
        ("GET", "/admin/destinations"),
    ]:
        answer = httpx.request(method, f"{plain.base}{path}", headers=BEARER)
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-0123456789",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        TOKEN,
    ],
)
def test_a_missing_or_wrong_bearer_token_is_401_with_a_bearer_challenge(gw, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [("GET", "/admin/deliveries"), ("POST", "/admin/destinations/ops/pause")]:
        answer = httpx.request(method, f"{gw.base}{path}", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer ")
        assert answer.json()["error"] == "unauthorized"
    assert TOKEN not in gw.logs()


def test_a_dead_delivery_is_listed_shown_and_delivered_after_replay_with_the_same_id(gw, api, rx):
    rx.script(Reply(400, b"unknown customer"), path="/crm")
    event = status("delivered")
    post(gw, "/callbacks/revicom", event)
    uuid_ = event["message_uuid"]
    [dead] = eventually(
        lambda: [d for d in deliveries_for(api, uuid_) if d["state"] == "dead"],
        what="the delivery to die",
    )
    assert dead["destination"] == "crm" and dead["route"] == "to-crm"
    assert dead["last_error"] == "HTTP 400: unknown customer"
    assert dead["id"] in [d["id"] for d in api.get("/deliveries?state=dead").json()]

    shown = api.get(f"/deliveries/{dead['id']}").json()
    assert shown["event"] == event
    assert [(a["outcome"], a["status"]) for a in shown["attempt_history"]] == [("dead", 400)]

    # The CLI reads the same store and agrees.
    listed = cli(gw, "deliveries", "list", "--message-uuid", uuid_, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == deliveries_for(api, uuid_)

    replayed = api.post("/replay", json={"state": "dead", "destination": "crm"}).json()
    assert dead["id"] in replayed["replayed"]
    eventually(
        lambda: deliveries_for(api, uuid_)[0]["state"] == "delivered",
        what="the replayed delivery to be delivered",
    )
    ids = [
        r.headers["webhook-id"]
        for r in rx.requests
        if r.path == "/crm" and uuid_.encode() in r.body
    ]
    assert ids == [dead["id"], dead["id"]]
    history = api.get(f"/deliveries/{dead['id']}").json()["attempt_history"]
    assert [a["outcome"] for a in history] == ["dead", "delivered"]


def test_a_listing_cut_short_by_its_limit_says_that_more_match(gw, api, rx):
    for _ in range(3):  # to the file destination: other tests count what the receiver gets
        post(gw, "/callbacks/orders", {"id": f"order-{uuid.uuid4()}", "type": "paid"})
    eventually(lambda: len(api.get("/deliveries").json()) >= 3, what="three deliveries")
    cut = api.get("/deliveries", params={"limit": 2})
    assert len(cut.json()) == 2 and cut.headers["X-Has-More"] == "true"
    whole = api.get("/deliveries", params={"limit": 100_000})
    assert whole.headers["X-Has-More"] == "false"

    text = cli(gw, "deliveries", "list", "--limit", "2")
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) == 3  # header and two rows
    assert text.stderr == (
        "showing the first 2 deliveries; more match (raise --limit, or narrow"
        " with --state, --destination or --since)\n"
    )
    as_json = cli(gw, "deliveries", "list", "--limit", "2", "--json")
    assert as_json.returncode == 0 and len(json.loads(as_json.stdout)) == 2
    assert as_json.stderr == text.stderr
    everything = cli(gw, "deliveries", "list", "--limit", "100000", "--json")
    assert everything.stderr == "" and len(json.loads(everything.stdout)) == len(whole.json())


def test_replay_by_id_and_bad_requests(gw, api, rx):
    assert api.get("/deliveries/msg_unknown").status_code == 404
    assert api.get("/deliveries?state=lost").status_code == 400
    assert api.post("/replay", json={}).status_code == 400
    assert api.post("/replay", json=["not", "an", "object"]).status_code == 400
    assert api.post("/destinations/nowhere/pause").status_code == 404

    rx.script(Reply(422), path="/crm")
    event = status("delivered")
    post(gw, "/callbacks/revicom", event)
    [dead] = eventually(
        lambda: [d for d in deliveries_for(api, event["message_uuid"]) if d["state"] == "dead"]
    )
    assert api.post("/replay", json={"ids": [dead["id"]]}).json() == {"replayed": [dead["id"]]}
    eventually(lambda: api.get(f"/deliveries/{dead['id']}").json()["state"] == "delivered")


def test_quarantined_events_are_listed_and_replayed_through_todays_chain(gw, api, rx):
    held = {"id": f"order-{uuid.uuid4()}"}  # no /type, which `orders` requires
    assert post(gw, "/callbacks/orders", held) == {"accepted": 0, "duplicates": 0, "quarantined": 1}
    listed = [e for e in api.get("/quarantine").json() if e["event"] == held]
    assert len(listed) == 1 and "/type" in listed[0]["reason"]
    [quarantined] = listed
    assert api.get("/quarantine", params={"limit": 0}).headers["X-Has-More"] == "true"
    assert cli(gw, "quarantine", "list", "--limit", "0").stderr.startswith(
        "showing the first 0 quarantined events; more match"
    )
    from_cli = cli(gw, "quarantine", "list", "--json")
    assert from_cli.returncode == 0, from_cli.stderr
    assert quarantined["id"] in [e["id"] for e in json.loads(from_cli.stdout)]

    # Still invalid under today's configuration: back to quarantine, with the reason.
    replayed = api.post("/replay", json={"quarantined": True, "ids": [quarantined["id"]]})
    assert replayed.json() == {"replayed": [quarantined["id"]]}
    eventually(
        lambda: [e for e in api.get("/quarantine").json() if e["id"] == quarantined["id"]],
        what="the event to be quarantined again",
    )

    # The operator relaxes the source, reloads, and replays: the event is routed and delivered.
    gw.config_path.write_text(CONFIG.format(token=TOKEN, rx=rx.url, required="/id"))
    assert api.post("/reload").json() == {"reloaded": True}
    replayed = api.post("/replay", json={"quarantined": True}).json()
    assert quarantined["id"] in replayed["replayed"]
    out = gw.workdir / "var" / "orders.jsonl"
    line = eventually(
        lambda: [
            json.loads(x)
            for x in (out.read_text().splitlines() if out.exists() else [])
            if json.loads(x)["event"] == held
        ],
        what="the replayed order in the file",
    )[0]
    assert line["event_id"] == quarantined["id"] and line["route"] == "orders"
    assert quarantined["id"] not in [e["id"] for e in api.get("/quarantine").json()]


def test_a_paused_destination_keeps_its_deliveries_pending_until_resumed(gw, api, rx):
    answer = api.post("/destinations/ops/pause", json={"reason": "ops receiver upgrade"})
    assert answer.json() == {"name": "ops", "paused": True}
    shown = {d["name"]: d for d in api.get("/destinations").json()}
    assert shown["ops"]["paused"] == "ops receiver upgrade"
    assert shown["crm"]["paused"] is None and shown["ops"]["type"] == "webhook"

    events = [status("read") for _ in range(3)]
    post(gw, "/callbacks/revicom", *events)
    uuids = {e["message_uuid"] for e in events}

    def pending() -> list[dict[str, Any]]:
        found = api.get("/deliveries", params={"destination": "ops"}).json()
        return [d for d in found if d["message_uuid"] in uuids]

    assert len(eventually(lambda: len(pending()) == 3 and pending())) == 3
    assert {d["state"] for d in pending()} == {"pending"}
    assert not [r for r in rx.requests if r.path == "/ops"]

    answer = api.post("/destinations/ops/resume")
    assert answer.json() == {"name": "ops", "paused": False}
    assert {d["name"]: d["paused"] for d in api.get("/destinations").json()}["ops"] is None
    eventually(
        lambda: {d["state"] for d in pending()} == {"delivered"},
        what="the paused deliveries to arrive after resume",
    )
    arrived = [r for r in rx.requests if r.path == "/ops"]
    assert {json.loads(r.body)[0]["message_uuid"] for r in arrived} == uuids
