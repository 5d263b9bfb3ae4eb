"""End to end: a real gateway subprocess, a real HTTP client, and the SQLite file it wrote.

Most tests share one server (several sources with different settings); a second server with
`server.trusted_proxies` covers `X-Forwarded-For`. Every test uses its own message ids, so tests
never see each other's events or dedupe keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import body, event
from gateway_process import GatewayProcess

from gateway.intake.body import split_elements

pytestmark = pytest.mark.slow

PACKAGE_SAMPLES = Path(__file__).resolve().parents[1] / "gateway" / "samples"
USER = "revicom"
PASSWORD = "p@ss:w/rd%"  # every character RFC 3986 userinfo needs percent-encoded
USERINFO = "revicom:p%40ss%3Aw%2Frd%25"
AUTH = (USER, PASSWORD)
JSON = {"Content-Type": "application/json"}

CONFIG = f"""
server: {{host: 127.0.0.1, max_body_size: 4KiB}}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
    format: revicom
    auth:
      basic: {{username: {USER}, password: "{PASSWORD}"}}
      realm: provider-callbacks
  via-cli:
    path: /callbacks/via-cli
    auth:
      basic: {{username: {USER}, password: "{PASSWORD}"}}
  strict:
    path: /callbacks/strict
    auth:
      basic: {{username: {USER}, password: "{PASSWORD}"}}
    on_invalid: reject
  local-only:
    path: /callbacks/local
    auth:
      allow_ips: [127.0.0.1/32]
  provider-only:
    path: /callbacks/provider
    auth:
      allow_ips: [185.203.96.7/32, 10.0.0.0/8]
"""

PROXY_CONFIG = """
server: {host: 127.0.0.1, trusted_proxies: [127.0.0.1/32]}
store: sqlite:///var/gateway.db
sources:
  provider-only:
    path: /callbacks/provider
    auth:
      allow_ips: [185.203.96.7/32]
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayProcess]]:
    """Both servers of this module, started side by side (start-up dominates the run time)."""
    procs = {
        "intake": GatewayProcess(CONFIG, tmp_path_factory.mktemp("intake")),
        "proxied": GatewayProcess(PROXY_CONFIG, tmp_path_factory.mktemp("proxied")),
    }
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            for started in [pool.submit(p.start) for p in procs.values()]:
                started.result()
        yield procs
    finally:
        for p in procs.values():
            p.kill()


@pytest.fixture(scope="module")
def gw(servers: dict[str, GatewayProcess]) -> GatewayProcess:
    return servers["intake"]


@pytest.fixture(scope="module")
def proxied(servers: dict[str, GatewayProcess]) -> GatewayProcess:
    return servers["proxied"]


@pytest.fixture(scope="module")
def client() -> Generator[httpx.Client, None, None]:
    with httpx.Client(timeout=10.0) as c:
        yield c


def stored(gw: GatewayProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def events_for(gw: GatewayProcess, message_uuid: str) -> list[tuple[Any, ...]]:
    return stored(gw, "SELECT source, state, raw FROM events WHERE message_uuid = ?", message_uuid)


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    payload = answer.json()
    assert set(payload) == {"error", "detail"}
    assert payload["error"] == code
    return payload


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("callback-gateway")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


# -- samples and authentication ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE_SAMPLES.glob("*.json")))
def test_every_sample_is_accepted_and_stored_verbatim(
    gw: GatewayProcess, client: httpx.Client, name: str
) -> None:
    raw_body = (PACKAGE_SAMPLES / f"{name}.json").read_bytes()
    elements = split_elements(raw_body)
    answer = client.post(gw.url("/callbacks/revicom"), content=raw_body, headers=JSON, auth=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": len(elements), "duplicates": 0, "quarantined": 0}
    for _, raw in elements:
        rows = stored(gw, "SELECT state FROM events WHERE source = 'revicom' AND raw = ?", raw)
        assert len(rows) == 1, raw
        assert rows[0][0] != "quarantined"


def test_send_cli_posts_a_sample_with_percent_encoded_userinfo(gw: GatewayProcess) -> None:
    url = gw.url("/callbacks/via-cli", userinfo=USERINFO)
    done = cli("send", url, "--sample", "delivered-undelivered", cwd=gw.workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("200 OK")
    assert '"accepted":1' in done.stdout
    rows = stored(
        gw,
        "SELECT state FROM events WHERE source = 'via-cli' AND message_uuid = ?",
        "063464ec-a34f-4558-90c5-984395000003",
    )
    assert len(rows) == 1
    assert rows[0][0] != "quarantined"
    assert PASSWORD not in done.stdout + done.stderr


def test_userinfo_credentials_with_reserved_characters_are_accepted(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    # httpx percent-decodes the userinfo of the URL, as the provider's client must.
    answer = client.post(
        gw.url("/callbacks/revicom", userinfo=USERINFO), content=body(ev), headers=JSON
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1
    assert len(events_for(gw, ev["message_uuid"])) == 1


def test_missing_credentials_get_a_basic_challenge(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    answer = client.post(gw.url("/callbacks/revicom"), content=body(ev), headers=JSON)
    assert_error(answer, 401, "unauthorized")
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Basic ")
    assert 'realm="provider-callbacks"' in challenge
    assert events_for(gw, ev["message_uuid"]) == []


@pytest.mark.parametrize(
    "auth",
    [("revicom", "wrong"), ("someone", PASSWORD), ("revicom", "p%40ss%3Aw%2Frd%25")],
    ids=["wrong-password", "wrong-user", "still-percent-encoded"],
)
def test_wrong_credentials_are_refused(
    gw: GatewayProcess, client: httpx.Client, auth: tuple[str, str]
) -> None:
    ev = event()
    answer = client.post(gw.url("/callbacks/revicom"), content=body(ev), headers=JSON, auth=auth)
    assert_error(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"].startswith("Basic ")
    assert events_for(gw, ev["message_uuid"]) == []


class BasicAfterChallenge(httpx.Auth):
    """A client that sends credentials only when challenged (some HTTP stacks do this)."""

    def __init__(self, user: str, password: str) -> None:
        self.header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.statuses: list[int] = []

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        self.statuses.append(response.status_code)
        if response.status_code == 401 and response.headers.get(
            "www-authenticate", ""
        ).lower().startswith("basic"):
            request.headers["Authorization"] = self.header
            response = yield request
            self.statuses.append(response.status_code)


def test_a_client_that_authenticates_only_after_the_challenge_succeeds(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    flow = BasicAfterChallenge(USER, PASSWORD)
    answer = client.post(gw.url("/callbacks/revicom"), content=body(ev), headers=JSON, auth=flow)
    assert flow.statuses == [401, 200]
    assert answer.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert len(events_for(gw, ev["message_uuid"])) == 1


# -- body checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_a_body_that_is_not_declared_json_is_415(
    gw: GatewayProcess, client: httpx.Client, ctype: str | None
) -> None:
    ev = event()
    headers = {"Content-Type": ctype} if ctype else {}
    answer = client.post(gw.url("/callbacks/revicom"), content=body(ev), headers=headers, auth=AUTH)
    assert_error(answer, 415, "unsupported_media_type")
    assert events_for(gw, ev["message_uuid"]) == []


@pytest.mark.parametrize(
    "ctype", ["application/json; charset=utf-8", "Application/JSON;charset=UTF-8"]
)
def test_a_charset_parameter_on_json_is_fine(
    gw: GatewayProcess, client: httpx.Client, ctype: str
) -> None:
    ev = event()
    answer = client.post(
        gw.url("/callbacks/revicom"), content=body(ev), headers={"Content-Type": ctype}, auth=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 1


def test_malformed_json_is_400_and_nothing_is_stored(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    broken = body(ev)[:-3]
    answer = client.post(gw.url("/callbacks/revicom"), content=broken, headers=JSON, auth=AUTH)
    payload = assert_error(answer, 400, "malformed_json")
    assert "malformed JSON" in payload["detail"]
    assert events_for(gw, ev["message_uuid"]) == []


def test_an_empty_body_is_400(gw: GatewayProcess, client: httpx.Client) -> None:
    answer = client.post(gw.url("/callbacks/revicom"), content=b"", headers=JSON, auth=AUTH)
    assert_error(answer, 400, "empty_body")


def test_a_bare_object_is_a_one_element_array(gw: GatewayProcess, client: httpx.Client) -> None:
    ev = event()
    raw = json.dumps(ev, indent=1)
    answer = client.post(gw.url("/callbacks/revicom"), content=raw, headers=JSON, auth=AUTH)
    assert answer.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert [r[2] for r in events_for(gw, ev["message_uuid"])] == [raw]


def test_an_empty_array_is_acknowledged_with_nothing_accepted(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    before = stored(gw, "SELECT count(*) FROM events")[0][0]
    answer = client.post(gw.url("/callbacks/revicom"), content=b"[]", headers=JSON, auth=AUTH)
    assert answer.status_code == 200
    assert answer.json() == {"accepted": 0, "duplicates": 0, "quarantined": 0}
    assert stored(gw, "SELECT count(*) FROM events")[0][0] == before


def test_a_body_over_max_body_size_is_413_with_a_json_error(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event(padding="x" * 5000)  # server.max_body_size is 4KiB
    answer = client.post(gw.url("/callbacks/revicom"), content=body(ev), headers=JSON, auth=AUTH)
    payload = assert_error(answer, 413, "too_large")
    assert "4096" in payload["detail"]
    assert events_for(gw, ev["message_uuid"]) == []


def test_an_oversized_content_length_is_refused_before_the_body_is_sent(
    gw: GatewayProcess,
) -> None:
    # Only the headers go out: the 413 must arrive without the server waiting for 50 MB.
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    head = (
        "POST /callbacks/revicom HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\n"
        f"Authorization: Basic {token}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 50000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head.encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == b"413"


# -- routing of requests ----------------------------------------------------------------------


def test_get_on_a_source_path_is_405(gw: GatewayProcess, client: httpx.Client) -> None:
    assert_error(client.get(gw.url("/callbacks/revicom"), auth=AUTH), 405, "method_not_allowed")


def test_an_unknown_path_is_404(gw: GatewayProcess, client: httpx.Client) -> None:
    answer = client.post(gw.url("/callbacks/nope"), content=body(event()), headers=JSON, auth=AUTH)
    assert_error(answer, 404, "not_found")


def test_health_and_readiness(gw: GatewayProcess, client: httpx.Client) -> None:
    assert client.get(gw.url("/healthz")).status_code == 200
    ready = client.get(gw.url("/readyz"))
    assert ready.status_code == 200
    assert "revicom" in ready.json()["sources"]


# -- address allowlist ------------------------------------------------------------------------


def test_an_allowlist_containing_the_client_lets_it_in(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    answer = client.post(gw.url("/callbacks/local"), content=body(ev), headers=JSON)
    assert answer.json()["accepted"] == 1
    assert [r[0] for r in events_for(gw, ev["message_uuid"])] == ["local-only"]


def test_an_allowlist_without_the_client_is_403(gw: GatewayProcess, client: httpx.Client) -> None:
    ev = event()
    answer = client.post(gw.url("/callbacks/provider"), content=body(ev), headers=JSON)
    payload = assert_error(answer, 403, "forbidden")
    assert "127.0.0.1" in payload["detail"]
    assert events_for(gw, ev["message_uuid"]) == []


def test_forwarded_for_is_ignored_without_trusted_proxies(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    headers = {**JSON, "X-Forwarded-For": "185.203.96.7"}
    answer = client.post(gw.url("/callbacks/provider"), content=body(ev), headers=headers)
    assert_error(answer, 403, "forbidden")
    assert events_for(gw, ev["message_uuid"]) == []


def test_forwarded_for_from_a_trusted_proxy_is_checked(
    proxied: GatewayProcess, client: httpx.Client
) -> None:
    allowed, spoofed, plain = event(), event(), event()
    url = proxied.url("/callbacks/provider")
    ok = client.post(
        url, content=body(allowed), headers={**JSON, "X-Forwarded-For": "185.203.96.7"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["accepted"] == 1
    # The client claims the provider's address, but our proxy saw it come from 6.6.6.6.
    bad = client.post(
        url,
        content=body(spoofed),
        headers={**JSON, "X-Forwarded-For": "185.203.96.7, 6.6.6.6"},
    )
    assert_error(bad, 403, "forbidden")
    # Straight from the (trusted) proxy address, without the header: 127.0.0.1 is not allowed.
    assert_error(client.post(url, content=body(plain), headers=JSON), 403, "forbidden")
    assert len(events_for(proxied, allowed["message_uuid"])) == 1
    assert events_for(proxied, spoofed["message_uuid"]) == []
    assert events_for(proxied, plain["message_uuid"]) == []


# -- duplicates -------------------------------------------------------------------------------


def test_a_sequential_resend_is_a_counted_duplicate(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    url = gw.url("/callbacks/revicom")
    first = client.post(url, content=body(ev), headers=JSON, auth=AUTH)
    second = client.post(url, content=body(ev), headers=JSON, auth=AUTH)
    assert first.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert second.json() == {"accepted": 0, "duplicates": 1, "quarantined": 0}
    assert len(events_for(gw, ev["message_uuid"])) == 1


def test_a_resend_with_different_formatting_is_still_a_duplicate(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    url = gw.url("/callbacks/revicom")
    client.post(url, content=body(ev), headers=JSON, auth=AUTH)
    again = json.dumps([dict(reversed(list(ev.items())))], indent=2)
    answer = client.post(url, content=again, headers=JSON, auth=AUTH)
    assert answer.json()["duplicates"] == 1
    assert len(events_for(gw, ev["message_uuid"])) == 1


def test_a_different_status_for_the_same_message_is_not_a_duplicate(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    sent = event(callback_event="sent", status="sent", status_time="2020-10-16T18:50:02Z")
    delivered = event(message_uuid=sent["message_uuid"])
    answer = client.post(
        gw.url("/callbacks/revicom"), content=body(sent, delivered), headers=JSON, auth=AUTH
    )
    assert answer.json() == {"accepted": 2, "duplicates": 0, "quarantined": 0}
    assert len(events_for(gw, sent["message_uuid"])) == 2


async def test_twenty_identical_posts_at_once_store_one_event(gw: GatewayProcess) -> None:
    ev = event()
    payload = body(ev)
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(timeout=10.0, limits=limits, auth=AUTH) as ac:
        answers = await asyncio.gather(
            *(
                ac.post(gw.url("/callbacks/revicom"), content=payload, headers=JSON)
                for _ in range(20)
            )
        )
    assert [a.status_code for a in answers] == [200] * 20
    counts = [a.json() for a in answers]
    assert sum(c["accepted"] for c in counts) == 1
    assert sum(c["duplicates"] for c in counts) == 19
    assert len(events_for(gw, ev["message_uuid"])) == 1
    hits = stored(
        gw,
        "SELECT d.hits FROM dedupe d JOIN events e ON e.id = d.event_id WHERE e.message_uuid = ?",
        ev["message_uuid"],
    )
    assert hits == [(19,)]


# -- invalid elements -------------------------------------------------------------------------


def test_an_invalid_element_is_quarantined_and_listed_with_its_reason(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    good = event()
    bad = event(cascade_step="two")
    del bad["status"]
    answer = client.post(
        gw.url("/callbacks/revicom"), content=body(good, bad), headers=JSON, auth=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 1, "duplicates": 0, "quarantined": 1}
    assert events_for(gw, bad["message_uuid"])[0][1] == "quarantined"
    assert events_for(gw, good["message_uuid"])[0][1] != "quarantined"

    listed = cli("quarantine", "list", "-c", "gateway.yaml", "--json", cwd=gw.workdir)
    assert listed.returncode == 0, listed.stderr
    mine = [q for q in json.loads(listed.stdout) if q["message_uuid"] == bad["message_uuid"]]
    assert len(mine) == 1
    assert mine[0]["source"] == "revicom"
    assert "status: required field is missing" in mine[0]["reason"]
    assert "cascade_step: expected" in mine[0]["reason"]


def test_with_on_invalid_reject_an_invalid_element_rejects_the_whole_request(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    good = event()
    bad = event(status_time=12345)
    answer = client.post(
        gw.url("/callbacks/strict"), content=body(good, bad), headers=JSON, auth=AUTH
    )
    payload = assert_error(answer, 422, "invalid")
    assert len(payload["detail"]) == 1
    assert payload["detail"][0]["index"] == 1
    assert any(p.startswith("status_time:") for p in payload["detail"][0]["problems"])
    assert events_for(gw, good["message_uuid"]) == []
    assert events_for(gw, bad["message_uuid"]) == []


def test_with_on_invalid_reject_valid_bodies_are_accepted(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    answer = client.post(gw.url("/callbacks/strict"), content=body(ev), headers=JSON, auth=AUTH)
    assert answer.json() == {"accepted": 1, "duplicates": 0, "quarantined": 0}
    assert [r[0] for r in events_for(gw, ev["message_uuid"])] == ["strict"]


def test_the_same_event_twice_in_one_body_is_stored_once(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    ev = event()
    answer = client.post(
        gw.url("/callbacks/revicom"), content=body(ev, ev), headers=JSON, auth=AUTH
    )
    assert answer.json() == {"accepted": 1, "duplicates": 1, "quarantined": 0}
    assert len(events_for(gw, ev["message_uuid"])) == 1


def test_a_resent_invalid_element_is_a_duplicate_not_a_second_quarantine(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    bad = event(status=None)
    url = gw.url("/callbacks/revicom")
    first = client.post(url, content=body(bad), headers=JSON, auth=AUTH)
    second = client.post(url, content=body(bad), headers=JSON, auth=AUTH)
    assert first.json() == {"accepted": 0, "duplicates": 0, "quarantined": 1}
    assert second.json() == {"accepted": 0, "duplicates": 1, "quarantined": 0}
    assert [r[1] for r in events_for(gw, bad["message_uuid"])] == ["quarantined"]


def test_an_element_that_is_not_an_object_is_quarantined_verbatim(
    gw: GatewayProcess, client: httpx.Client
) -> None:
    marker = str(uuid.uuid4())
    raw = f'"not an event {marker}"'
    answer = client.post(gw.url("/callbacks/revicom"), content=f"[{raw}]", headers=JSON, auth=AUTH)
    assert answer.json() == {"accepted": 0, "duplicates": 0, "quarantined": 1}
    rows = stored(gw, "SELECT state, reason FROM events WHERE raw = ?", raw)
    assert rows == [("quarantined", "expected an object, found str")]


def test_a_client_that_waits_for_100_continue_gets_it_then_the_answer(
    gw: GatewayProcess,
) -> None:
    # Java and .NET HTTP clients send `Expect: 100-continue` before a POST body by default.
    ev = event()
    data = body(ev)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    head = (
        "POST /callbacks/revicom HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\n"
        f"Authorization: Basic {token}\r\n"
        "Content-Type: application/json\r\n"
        "Expect: 100-continue\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head.encode())
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(data)
        final = b""
        while b'"quarantined"' not in final:
            chunk = sock.recv(4096)
            assert chunk, final
            final += chunk
    assert final.startswith(b"HTTP/1.1 200 ")
    assert len(events_for(gw, ev["message_uuid"])) == 1
