"""Hostile input at intake, end to end: a real gateway subprocess, raw sockets and httpx.

Each test reproduces one way a client broke or fooled intake (issue 15) and asserts the answer,
what was stored (nothing, for every refusal), and what was counted and logged.

Three servers start side by side: `gw` (defaults, two sources), `proxied` (behind a trusted
proxy, with an allowlist) and `tight` (short timeouts, few connections, a small body limit and
a source format that raises, for the 500 path).
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from typing import Any

import httpx
import pytest
from e2e_helpers import body, event, eventually
from gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

USER, PASSWORD = "revicom", "s3cret-pw"
AUTH = (USER, PASSWORD)
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
JSON = {"Content-Type": "application/json"}

GW = f"""
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
    auth: {{basic: {{username: {USER}, password: {PASSWORD}}}}}
  strict:
    path: /callbacks/strict
    auth: {{basic: {{username: {USER}, password: {PASSWORD}}}}}
    on_invalid: reject
"""

PROXIED = f"""
server: {{host: 127.0.0.1, trusted_proxies: [127.0.0.1/32]}}
store: sqlite:///var/gateway.db
sources:
  provider-only:
    path: /callbacks/provider
    auth: {{allow_ips: [185.203.96.7/32]}}
  guarded:
    path: /callbacks/guarded
    auth:
      basic: {{username: {USER}, password: {PASSWORD}}}
      max_failures: 3
      failure_window: 10m
"""

TIGHT = """
server:
  host: 127.0.0.1
  max_body_size: 2KiB
  header_timeout: 1s
  body_timeout: 1s
  keep_alive_timeout: 1s
  max_connections: 20
store: sqlite:///var/gateway.db
plugins: [exploding_format]
sources:
  open:
    path: /callbacks/open
  exploding:
    path: /callbacks/exploding
    format: exploding
"""

EXPLODING = """
from gateway import hookimpl
from gateway_plugins.json_format import JsonFormat


class Exploding(JsonFormat):
    def check(self, element):
        raise RuntimeError("a bug in a source format")


@hookimpl
def register_source_formats(register):
    register("exploding", Exploding)
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayProcess]]:
    tight_dir = tmp_path_factory.mktemp("tight")
    (tight_dir / "exploding_format.py").write_text(EXPLODING)
    procs = {
        "gw": GatewayProcess(GW, tmp_path_factory.mktemp("gw")),
        "proxied": GatewayProcess(PROXIED, tmp_path_factory.mktemp("proxied")),
        "tight": GatewayProcess(TIGHT, tight_dir),
    }
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            # Start-up is polled for readiness; a generous bound for a machine under load.
            for started in [pool.submit(p.start, 120) for p in procs.values()]:
                started.result()
        yield procs
    finally:
        for p in procs.values():
            p.kill()


@pytest.fixture(scope="module")
def gw(servers: dict[str, GatewayProcess]) -> GatewayProcess:
    return servers["gw"]


@pytest.fixture(scope="module")
def proxied(servers: dict[str, GatewayProcess]) -> GatewayProcess:
    return servers["proxied"]


@pytest.fixture(scope="module")
def tight(servers: dict[str, GatewayProcess]) -> GatewayProcess:
    return servers["tight"]


def count(gw: GatewayProcess, sql: str = "SELECT count(*) FROM events") -> int:
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        return int(db.execute(sql).fetchone()[0])


def post(gw: GatewayProcess, path: str, content: bytes, **kw: Any) -> httpx.Response:
    return httpx.post(gw.url(path), content=content, headers=JSON, timeout=30, **kw)


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` on a fresh connection; everything the server answers until it closes
    or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """Read one complete answer (headers and a Content-Length body) or up to EOF."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(rest) >= length[0]:
                return data


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def json_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def requests_counted(gw: GatewayProcess, source: str, status: int) -> float:
    text = httpx.get(gw.url("/metrics"), timeout=10).text
    needle = f'callback_gateway_requests_total{{source="{source}",status="{status}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line[len(needle) :])
    return 0.0


def assert_no_traceback(gw: GatewayProcess) -> None:
    assert "Traceback" not in gw.logs()


# -- X-Forwarded-For over several header lines ---------------------------------------------------


def forwarded(port: int, *lines: str) -> bytes:
    payload = body(event())
    head = [
        "POST /callbacks/provider HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"X-Forwarded-For: {line}" for line in lines),
        "Connection: close",
    ]
    return raw_exchange(port, ("\r\n".join(head) + "\r\n\r\n").encode() + payload)


def test_every_forwarded_for_line_counts_and_the_rightmost_untrusted_hop_decides(
    proxied: GatewayProcess,
) -> None:
    before = count(proxied)
    # The client wrote the provider's address; our proxy appended the real one as a new line.
    refused = forwarded(proxied.port, "185.203.96.7", "6.6.6.6")
    assert status_of(refused) == 403, refused
    assert json_of(refused)["detail"] == "address 6.6.6.6 is not allowed"
    assert count(proxied) == before
    # The same hops in one line, and the allowed address as the right-most line.
    assert status_of(forwarded(proxied.port, "185.203.96.7, 6.6.6.6")) == 403
    assert status_of(forwarded(proxied.port, "6.6.6.6", "185.203.96.7")) == 200
    assert count(proxied) == before + 1
    # The refusal's log line names the refused address.
    assert "status=403 error=forbidden client=6.6.6.6" in proxied.logs()


# -- failed authentication is throttled per client address -------------------------------------


def test_failed_authentication_is_throttled_per_address_without_slowing_valid_clients(
    proxied: GatewayProcess,
) -> None:
    def attempt(client: str, auth: tuple[str, str]) -> httpx.Response:
        headers = {**JSON, "X-Forwarded-For": client}
        url = proxied.url("/callbacks/guarded")
        return httpx.post(url, content=body(event()), headers=headers, auth=auth, timeout=10)

    before = count(proxied)
    wrong = (USER, "guess")
    assert [attempt("6.6.6.6", wrong).status_code for _ in range(3)] == [401, 401, 401]
    throttled = attempt("6.6.6.6", wrong)
    assert throttled.status_code == 429
    assert throttled.json()["error"] == "too_many_failures"
    assert 500 < int(throttled.headers["retry-after"]) <= 600
    # While throttled, the address's credentials are not even checked.
    assert attempt("6.6.6.6", AUTH).status_code == 429
    # The provider, at another address, is not slowed at all.
    assert [attempt("185.203.96.7", AUTH).status_code for _ in range(5)] == [200] * 5
    assert count(proxied) == before + 5
    assert requests_counted(proxied, "guarded", 429) == 2
    logs = proxied.logs()
    assert logs.count("client=6.6.6.6 failed authentication 3 times") == 1
    assert "guess" not in logs


# -- strict JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"7" * 5000, b"-" + b"9" * 400, b"1e400", b"NaN", b"Infinity", b"-Infinity", b'"\\ud800"'],
    ids=["5000-digits", "400-digits", "1e400", "nan", "infinity", "-infinity", "lone-surrogate"],
)
def test_values_outside_strict_json_are_400_and_store_nothing(
    gw: GatewayProcess, value: bytes
) -> None:
    before = count(gw)
    payload = b'[{"message_uuid": "x", "status": ' + value + b"}]"
    answer = post(gw, "/callbacks/revicom", payload, auth=AUTH)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "malformed_json"
    assert count(gw) == before
    assert_no_traceback(gw)


def test_an_element_with_a_repeated_key_is_quarantined_with_that_reason(
    gw: GatewayProcess,
) -> None:
    good, twice = event(), event()
    twice_text = json.dumps(twice)[:-1] + ', "status": "read"}'
    payload = f"[{json.dumps(good)}, {twice_text}]".encode()
    answer = post(gw, "/callbacks/revicom", payload, auth=AUTH)
    assert answer.json() == {"accepted": 1, "duplicates": 0, "quarantined": 1}
    sql = f"SELECT state, reason FROM events WHERE message_uuid = '{twice['message_uuid']}'"
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        [(state, reason)] = db.execute(sql).fetchall()
    assert state == "quarantined"
    assert "duplicate key 'status'" in reason


def test_a_repeated_key_with_on_invalid_reject_is_422(gw: GatewayProcess) -> None:
    before = count(gw)
    twice = json.dumps(event())[:-1] + ', "status": "read"}'
    answer = post(gw, "/callbacks/strict", f"[{twice}]".encode(), auth=AUTH)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["problems"][0].startswith("duplicate key 'status'")
    assert count(gw) == before


# -- one request cannot flood the quarantine -----------------------------------------------------


def test_a_body_of_150000_elements_is_413_and_adds_no_quarantine_rows(gw: GatewayProcess) -> None:
    before = count(gw)
    payload = b"[" + b",".join([b"{}"] * 150_000) + b"]"  # 450 KB: under max_body_size
    answer = post(gw, "/callbacks/revicom", payload, auth=AUTH)
    assert answer.status_code == 413
    assert answer.json()["error"] == "too_many_events"
    assert "more than 10000 elements" in answer.json()["detail"]
    assert count(gw) == before
    assert httpx.get(gw.url("/healthz"), timeout=5).status_code == 200


# -- limits: header size, timeouts, connections ------------------------------------------------


def test_a_100kb_authorization_header_is_431_not_413(gw: GatewayProcess) -> None:
    head = (
        "POST /callbacks/revicom HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\n"
        f"Authorization: Basic {'A' * 100_000}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
    )
    answer = raw_exchange(gw.port, head.encode())
    assert status_of(answer) == 431, answer[:300]
    assert json_of(answer)["error"] == "header_too_large"
    assert "server.max_header_size" in json_of(answer)["detail"]
    eventually(lambda: "status=431 error=header_too_large client=127.0.0.1" in gw.logs())


def test_a_header_trickled_byte_by_byte_is_cut_at_the_header_timeout(
    tight: GatewayProcess,
) -> None:
    # Sanic's timer restarts on every byte; the whole header must arrive within 1s here.
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", tight.port), timeout=5) as sock:
        sock.sendall(b"POST /callbacks/open HTTP/1.1\r\n")
        sock.settimeout(0.2)  # paces the trickle: one byte per wait for an answer
        while not answer and time.monotonic() - started < 10:
            try:
                sock.sendall(b"X")
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
    elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert "server.header_timeout" in json_of(answer)["detail"]
    assert elapsed < 5


def test_a_body_shorter_than_its_content_length_is_408_after_the_body_timeout(
    tight: GatewayProcess,
) -> None:
    before = count(tight)
    started = time.monotonic()
    head = (
        "POST /callbacks/open HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{tight.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        '[{"a": 1}'
    )
    answer = raw_exchange(tight.port, head.encode())
    assert status_of(answer) == 408, answer
    assert "server.body_timeout" in json_of(answer)["detail"]
    assert time.monotonic() - started < 5
    assert count(tight) == before
    assert requests_counted(tight, "open", 408) >= 1


def test_idle_connections_beyond_the_cap_do_not_take_healthz_down(tight: GatewayProcess) -> None:
    with ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", tight.port), timeout=5))
            for _ in range(60)  # three times server.max_connections
        ]
        answer = httpx.get(tight.url("/healthz"), timeout=5)
        assert answer.status_code == 200
        # The oldest idle connections were closed to make room.
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    tight: GatewayProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", tight.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
    assert time.monotonic() - started < 4


# -- every answer is counted and logged --------------------------------------------------------


def test_a_413_for_a_large_body_is_counted_and_logged(tight: GatewayProcess) -> None:
    before = requests_counted(tight, "open", 413)
    answer = post(tight, "/callbacks/open", body(event(padding="x" * 4000)))
    assert answer.status_code == 413
    assert requests_counted(tight, "open", 413) == before + 1
    assert "source=open status=413 error=too_large" in tight.logs()


def test_a_500_is_counted_and_logged_and_stores_nothing(tight: GatewayProcess) -> None:
    before = count(tight)
    answer = post(tight, "/callbacks/exploding", body(event()))
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal_error"
    assert requests_counted(tight, "exploding", 500) == 1
    eventually(lambda: "source=exploding status=500 error=internal_error" in tight.logs())
    assert count(tight) == before
