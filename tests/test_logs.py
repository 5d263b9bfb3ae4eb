"""Logs of a real gateway: one line per request outcome, JSON lines with ``log_format: json``,
and no configured secret or received credential anywhere in the output, even on error paths.

Two gateways (text and JSON) start side by side; both are shared by the module.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, eventually, status
from gateway_process import GatewayProcess, free_port
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

PASSWORD = "basic-Pass-4321"
WRONG_PASSWORD = "not-the-password-77"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN_TOKEN = "admin-log-token-abcdef123456"
HEADER_AUTH = "Bearer dest-header-secret-987"
URL_PASSWORD = "url-pass-5555"
JSON = {"Content-Type": "application/json"}


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


#: Every string that must never appear in the gateway's output.
SECRETS = {
    "basic auth password": PASSWORD,
    "webhook secret": WHSEC,
    "webhook secret key": WHSEC.removeprefix("whsec_"),
    "admin token": ADMIN_TOKEN,
    "Authorization header value": "dest-header-secret-987",
    "URL password": URL_PASSWORD,
    "Basic credentials the provider sent": basic("revicom", PASSWORD),
    "wrong password a client sent": WRONG_PASSWORD,
    "wrong Basic credentials a client sent": basic("revicom", WRONG_PASSWORD),
}
#: Known leak (reported): the gateway scrubs a URL's password but not the Basic header httpx
#: derives from it, so a receiver echoing its Authorization header puts it in logs.
URL_BASIC = basic("hookuser", URL_PASSWORD)


def config(log_format: str, rx: str) -> str:
    closed = f"http://hookuser:{URL_PASSWORD}@127.0.0.1:{free_port()}/down"
    return f"""
server: {{host: 127.0.0.1, max_body_size: 2KiB}}
store: sqlite:///var/gateway.db
log_format: {log_format}
admin: {{token: {ADMIN_TOKEN}}}
sources:
  revicom:
    path: /callbacks/revicom
    auth: {{basic: {{username: revicom, password: "{PASSWORD}"}}}}
  strict:
    path: /callbacks/strict
    on_invalid: reject
destinations:
  signed:
    type: webhook
    url: "http://hookuser:{URL_PASSWORD}@{rx.removeprefix("http://")}/signed"
    secret: {WHSEC}
    retry: {{attempts: 1}}
  headed:
    type: webhook
    url: "{rx}/headed"
    headers: {{Authorization: "{HEADER_AUTH}"}}
    retry: {{attempts: 1}}
  unreachable:
    type: webhook
    url: "{closed}"
    retry: {{attempts: 1}}
routes:
  - name: everywhere
    match: {{status: undelivered}}
    to: [signed, headed, unreachable]
"""


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    # A receiver that rejects everything and echoes the credentials it got: the gateway
    # stores and logs the start of error bodies, so this is a path that leaks.
    echo = (
        f"rejected: Authorization: {HEADER_AUTH};"
        f" Basic {basic('hookuser', URL_PASSWORD)}; secret {WHSEC}"
    )
    with ThreadedReceiver(Reply(400, echo)) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, rx: Receiver
) -> Iterator[dict[str, GatewayProcess]]:
    procs = {
        fmt: GatewayProcess(config(fmt, rx.url), tmp_path_factory.mktemp(f"logs-{fmt}"))
        for fmt in ("text", "json")
    }
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(GatewayProcess.start, procs.values()))
    yield procs
    for gw in procs.values():
        gw.kill()


def request_lines(gw: GatewayProcess) -> list[str]:
    return [line for line in gw.logs().splitlines() if "gateway.intake.endpoint" in line]


def exchange(gw: GatewayProcess) -> list[tuple[str, int]]:
    """One request per outcome; returns (source, status) of each."""
    url = f"{gw.base}/callbacks"
    body = json.dumps([status()])
    creds = ("revicom", PASSWORD)
    calls = [
        ("revicom", 200, {"auth": creds, "content": body, "headers": JSON}),
        ("revicom", 200, {"auth": creds, "content": body, "headers": JSON}),  # duplicate
        ("revicom", 401, {"auth": ("revicom", WRONG_PASSWORD), "content": body, "headers": JSON}),
        ("revicom", 401, {"content": body, "headers": JSON}),
        ("revicom", 415, {"auth": creds, "content": body, "headers": {"Content-Type": "text/x"}}),
        ("revicom", 400, {"auth": creds, "content": b"[{", "headers": JSON}),
        ("strict", 422, {"content": b'[{"no": "fields"}]', "headers": JSON}),
        ("strict", 200, {"content": json.dumps([status()]), "headers": JSON}),
    ]
    for source, expected, kw in calls:
        answer = httpx.post(f"{url}/{source}", timeout=10, **kw)
        assert answer.status_code == expected, (source, kw, answer.text)
    return [(source, expected) for source, expected, _ in calls]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_each_request_to_a_source_logs_one_line_with_its_outcome(servers, fmt):
    gw = servers[fmt]
    before = len(request_lines(gw))
    outcomes = exchange(gw)
    lines = eventually(
        lambda: len(request_lines(gw)) >= before + len(outcomes) and request_lines(gw)[before:]
    )
    assert len(lines) == len(outcomes)
    for line, (source, code) in zip(lines, outcomes, strict=True):
        text = json.loads(line)["message"] if fmt == "json" else line
        assert f"source={source} status={code}" in text, (line, source, code)


def test_every_json_log_line_parses_with_time_level_logger_and_message(servers):
    gw = servers["json"]
    exchange(gw)
    lines = gw.logs().splitlines()
    assert len(lines) > 5
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_or_credential_appears_in_logs_even_on_error_paths(servers, fmt):
    gw = servers[fmt]
    before = gw.logs().count("is dead")
    exchange(gw)
    # Wrong and missing admin tokens, including one that contains the real token.
    for auth in (f"Bearer {ADMIN_TOKEN}x", f"Basic {ADMIN_TOKEN}", "Bearer nope-nope-nope-1"):
        answer = httpx.get(f"{gw.base}/admin/deliveries", headers={"Authorization": auth})
        assert answer.status_code == 401
    # An event for every failing destination: dead at once, each logging its error.
    failing = status() | {"status": "undelivered"}
    r = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps([failing]),
        headers=JSON,
        auth=("revicom", PASSWORD),
    )
    assert r.status_code == 200
    eventually(lambda: gw.logs().count("is dead") >= before + 3, what="three dead deliveries")
    log = gw.logs()
    assert "HTTP 400: rejected" in log  # the echoed body reached the log, scrubbed
    leaked = {what: secret for what, secret in SECRETS.items() if secret in log}
    assert not leaked, f"secrets in the {fmt} log: {leaked}"

    # The stored attempt errors, shown through the admin API and the CLI, are scrubbed too.
    admin = httpx.get(
        f"{gw.base}/admin/deliveries",
        params={"message_uuid": failing["message_uuid"]},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ).text
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "deliveries",
            "list",
            "-c",
            "gateway.yaml",
            "--message-uuid",
            failing["message_uuid"],
            "--json",
        ],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert len(json.loads(shown.stdout)) == 3
    for where, text in (("admin API", admin), ("CLI", shown.stdout + shown.stderr)):
        leaked = {what: secret for what, secret in SECRETS.items() if secret in text}
        assert not leaked, f"secrets in the {where} output: {leaked}"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_basic_credentials_derived_from_a_url_password_are_scrubbed(servers, fmt):
    gw = servers[fmt]
    before = gw.logs().count("is dead")
    failing = status() | {"status": "undelivered"}
    r = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps([failing]),
        headers=JSON,
        auth=("revicom", PASSWORD),
    )
    assert r.status_code == 200
    eventually(lambda: gw.logs().count("is dead") >= before + 3, what="three dead deliveries")
    assert URL_BASIC not in gw.logs()
