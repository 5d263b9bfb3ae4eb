"""Credentials in destination URLs and headers, on a real gateway with a real loopback receiver:
a webhook URL's userinfo becomes Basic auth, and a receiver that echoes its request (request
line and headers) into an error answer gets no secret into ``last_error``, the log or CLI output.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, eventually, status
from gateway_process import GatewayProcess
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

USER, PASSWORD = "hook-user", "p@ss-w0rd-123"
API_KEY = "key-0123456789abcdef"
TOKEN = "secrets-admin-token-0123456789"
SLACK_PATH = "/services/T0SECRET01/B0SECRET02/slackSecretToken0123456789"
SECRETS = (
    PASSWORD,
    API_KEY,
    SLACK_PATH,
    "slackSecretToken0123456789",
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
)

CONFIG = """
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
admin: {{token: {token}}}
sources:
  revicom: {{path: /callbacks/revicom}}
destinations:
  basic: {{type: webhook, url: "{userinfo_url}/basic"}}
  echo-hook:
    type: webhook
    url: "{rx}/echo"
    headers: {{X-Api-Key: "{api_key}", Content-Type: application/json}}
    retry: {{attempts: 1}}
  echo-slack: {{type: slack, webhook_url: "{rx}{slack_path}", retry: {{attempts: 1}}}}
routes:
  - name: all
    to: [basic, echo-hook, echo-slack]
"""


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver(Reply(500, echo_request=True)) as receiver:
        receiver.script(Reply(200), path="/basic")
        yield receiver


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, rx: Receiver) -> Iterator[GatewayProcess]:
    userinfo_url = rx.url.replace("http://", f"http://{USER}:{PASSWORD.replace('@', '%40')}@")
    config = CONFIG.format(
        rx=rx.url, userinfo_url=userinfo_url, api_key=API_KEY, slack_path=SLACK_PATH, token=TOKEN
    )
    proc = GatewayProcess(config, tmp_path_factory.mktemp("secrets")).start()
    answer = httpx.post(
        f"{proc.base}/callbacks/revicom",
        content=json.dumps([status("sent")]),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    yield proc
    proc.kill()


def cli(gw: GatewayProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(gw.config_path)],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def settled(gw: GatewayProcess) -> list[dict[str, Any]]:
    rows = httpx.get(
        f"{gw.base}/admin/deliveries", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    return rows if len(rows) == 3 and all(r["state"] in ("delivered", "dead") for r in rows) else []


def test_a_webhook_url_with_userinfo_sends_basic_auth_and_a_clean_url(
    gw: GatewayProcess, rx: Receiver
) -> None:
    rows = eventually(lambda: settled(gw), timeout=30, what="three finished deliveries")
    by_destination = {r["destination"]: r for r in rows}
    assert by_destination["basic"]["state"] == "delivered", by_destination["basic"]
    [request] = [r for r in rx.requests if r.path == "/basic"]
    expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"


def test_echoed_secret_paths_and_header_values_are_masked_everywhere(
    gw: GatewayProcess, rx: Receiver
) -> None:
    rows = eventually(lambda: settled(gw), timeout=30, what="three finished deliveries")
    echoed = {r.path for r in rx.requests}
    assert {"/echo", SLACK_PATH} <= echoed  # the receiver did see (and echo) the secrets
    errors = {r["destination"]: r["last_error"] for r in rows if r["state"] == "dead"}
    assert set(errors) == {"echo-hook", "echo-slack"}
    assert "HTTP 500" in errors["echo-hook"] and "***" in errors["echo-hook"]
    assert "500" in errors["echo-slack"] and "***" in errors["echo-slack"]
    shown = [cli(gw, "deliveries", "list")]  # the CLI reads the store itself
    shown += [cli(gw, "deliveries", "show", r["id"]) for r in rows if r["state"] == "dead"]
    for text in [*errors.values(), *shown, gw.logs()]:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:2000])


def test_check_refuses_userinfo_together_with_an_authorization_header(tmp_path: Any) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "sources: {s: {path: /s}}\n"
        "destinations:\n"
        f"  crm: {{type: webhook, url: 'http://{USER}:secretpw99@127.0.0.1:9/x',"
        " headers: {Authorization: 'Bearer abc'}}\n"
        "routes: [{name: r, to: [crm]}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "credentials in the URL" in done.stderr and "give one of them" in done.stderr
    assert "secretpw99" not in done.stderr
