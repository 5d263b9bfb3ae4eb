"""SIGTERM stops a real gateway from taking requests at once (`gateway.server.closing`).

A delivery held by a slow receiver keeps the gateway draining for a few seconds; meanwhile
an idle keep-alive connection is closed, a request arriving on a new connection is answered
503 with ``Connection: close``, a request whose body was half sent at SIGTERM is still
committed and answered (then its connection closes), and the process exits 0.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable

from e2e_helpers import ThreadedReceiver, event, eventually
from gateway_process import GatewayProcess
from receiver import Reply

CONFIG = """
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
destinations:
  hook: {{type: webhook, url: "{url}/hook"}}
routes:
  - name: all
    match: {{callback_event: delivered}}
    to: [hook]
"""


def request_bytes(port: int, body: bytes) -> bytes:
    head = (
        f"POST /callbacks/revicom HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    size = int(headers.get("content-length", "0"))
    while len(rest) < size:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest[:size]


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def post_once(port: int) -> tuple[int, dict[str, str]]:
    with connect(port) as sock:
        sock.sendall(request_bytes(port, json.dumps([event()]).encode()))
        status, headers, _ = read_response(sock)
        return status, headers


def test_sigterm_stops_taking_requests_at_once_and_finishes_those_in_flight(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    with ThreadedReceiver(Reply(200, stall=6.0)) as rx:
        gw = gateway_factory(CONFIG.format(url=rx.url))
        idle = connect(gw.port)
        idle.sendall(request_bytes(gw.port, json.dumps([event()]).encode()))
        status, headers, _ = read_response(idle)
        assert status == 200 and headers["connection"] == "keep-alive"
        eventually(lambda: rx.requests, what="the delivery to reach the slow receiver")

        body = json.dumps([event()]).encode()
        busy = connect(gw.port)
        whole = request_bytes(gw.port, body)
        busy.sendall(whole[: len(whole) - 10])  # in flight: the body is not complete

        assert gw.proc is not None
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)

        refused = eventually(
            lambda: (answer := post_once(gw.port))[0] == 503 and answer,
            timeout=4,
            what="a request after SIGTERM to be refused",
        )
        assert refused[1]["connection"] == "close"

        idle.settimeout(3)
        assert idle.recv(1) == b"", "the idle keep-alive connection is closed"
        idle.close()

        busy.sendall(whole[len(whole) - 10 :])
        status, headers, answer = read_response(busy)
        assert status == 200, answer
        assert json.loads(answer)["accepted"] == 1
        assert headers["connection"] == "close"
        busy.settimeout(3)
        assert busy.recv(1) == b""
        busy.close()

        assert gw.stop(timeout=30) == 0
        took = time.monotonic() - started
        assert took < 15, f"stopping took {took:.1f}s"
