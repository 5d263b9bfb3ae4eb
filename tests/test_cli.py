"""The `callback-gateway` command as a user runs it: exit codes, one-line errors, `send`.

Each test runs the installed command in a subprocess, so argument parsing, exit codes and the
absence of tracebacks are what a shell would see. `send` talks to a real HTTP server on loopback
that records what it received.
"""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import gateway
from gateway import samples

REPO = Path(__file__).resolve().parents[1]
#: ``key.path[index]: message`` as DESIGN.md promises for `check`.
PROBLEM_LINE = re.compile(r"^[A-Za-z_][\w\-]*(\[\d+\]|\.[\w\-]+)*: \S.*$")


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("callback-gateway")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- check --------------------------------------------------------------------------------------


def test_check_accepts_the_example_config() -> None:
    done = cli("check", "-c", "config.example.yaml")
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stderr


def test_check_reports_every_problem_with_its_key_path_and_a_hint(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "server: {prot: 8080, workers: 0}\n"
        "sources:\n"
        "  revicom: {path: /callbacks/revicom, fromat: revicom}\n"
        "routes:\n"
        "  - {to: [archive]}\n"
        "  - {name: x, to: [archive], stpo: true}\n"
        "destinations:\n"
        "  archive: {type: file, path: var/events.jsonl}\n"
    )
    done = cli("check", "-c", str(config))
    assert done.returncode == 2
    problems = lines(done.stderr)
    assert len(problems) == 4, done.stderr
    for line in problems:
        assert PROBLEM_LINE.match(line), line
    assert "server.prot: unknown key (did you mean 'port'?)" in problems
    assert "sources.revicom.fromat: unknown key (did you mean 'format'?)" in problems
    assert any(p.startswith("server.workers: ") for p in problems)
    assert any(p.startswith("routes[1].stpo: ") and "did you mean 'stop'?" in p for p in problems)
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_check_keeps_the_line_and_column_of_a_yaml_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  port: [8080\n")
    done = cli("check", "-c", str(config))
    assert done.returncode == 2
    [line] = lines(done.stderr)
    assert re.search(r"gateway\.yaml:\d+:\d+: YAML syntax error", line), line


def test_a_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for verb in (["check"], ["run"], ["quarantine", "list"], ["deliveries", "list"]):
        done = cli(*verb, "-c", str(missing))
        assert done.returncode == 2, (verb, done.stderr)
        [line] = lines(done.stderr)
        assert str(missing) in line
        assert "Traceback" not in done.stderr


def test_an_unreadable_config_path_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = cli("check", "-c", str(tmp_path))  # a directory
    assert done.returncode == 2
    [line] = lines(done.stderr)
    assert "cannot read" in line


# -- version ------------------------------------------------------------------------------------


def test_python_dash_m_gateway_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"callback-gateway {gateway.__version__}"


# -- send ---------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP server answering `status` to everything and recording requests."""

    port: int
    status: int = 200
    requests: list[Received] = field(default_factory=list)

    def url(self, path: str, userinfo: str | None = None) -> str:
        host = f"{userinfo}@127.0.0.1" if userinfo else "127.0.0.1"
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            data = self.rfile.read(length)
            state.requests.append(
                Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, data)
            )
            payload = b'{"accepted": 1}'
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_send_posts_the_exact_sample_bytes_with_decoded_basic_credentials(
    receiver: Receiver,
) -> None:
    url = receiver.url("/callbacks/revicom", userinfo="revicom:p%40ss%3Aw%2Frd")
    done = cli("send", url, "--sample", "batch-mixed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("200 OK")
    [got] = receiver.requests
    assert got.path == "/callbacks/revicom"
    assert got.headers["content-type"] == "application/json"
    assert (
        got.headers["authorization"] == "Basic " + base64.b64encode(b"revicom:p@ss:w/rd").decode()
    )
    assert got.body == samples.load("batch-mixed")
    assert "p@ss:w/rd" not in done.stdout + done.stderr


def test_send_without_userinfo_sends_no_credentials(receiver: Receiver) -> None:
    done = cli("send", receiver.url("/cb"), "--sample", "delivered")
    assert done.returncode == 0, done.stderr
    assert "authorization" not in receiver.requests[0].headers


def test_send_posts_a_file(receiver: Receiver, tmp_path: Path) -> None:
    f = tmp_path / "mine.json"
    f.write_bytes(b'[{"message_uuid": "x"}]')
    done = cli("send", receiver.url("/cb"), "--file", str(f))
    assert done.returncode == 0, done.stderr
    assert receiver.requests[0].body == f.read_bytes()


@pytest.mark.parametrize("status", [401, 422, 503])
def test_send_exits_1_when_the_answer_is_not_2xx(receiver: Receiver, status: int) -> None:
    receiver.status = status
    done = cli("send", receiver.url("/cb"), "--sample", "delivered")
    assert done.returncode == 1
    assert done.stdout.startswith(str(status))


def test_send_exits_1_when_nothing_listens() -> None:
    with socket.socket() as s:  # bind and release: a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    done = cli("send", f"http://127.0.0.1:{closed}/cb", "--sample", "delivered")
    assert done.returncode == 1
    [line] = lines(done.stderr)
    assert "cannot reach" in line


def test_send_to_an_unknown_sample_is_one_line_and_exit_2(receiver: Receiver) -> None:
    done = cli("send", receiver.url("/cb"), "--sample", "no-such-sample")
    assert done.returncode == 2
    [line] = lines(done.stderr)
    assert "no-such-sample" in line
    assert receiver.requests == []


def test_send_refuses_a_url_that_is_not_http(receiver: Receiver) -> None:
    done = cli("send", "ftp://127.0.0.1/cb", "--sample", "delivered")
    assert done.returncode == 2
    assert len(lines(done.stderr)) == 1


def test_send_list_samples_with_a_url_lists_the_sample_names() -> None:
    done = cli("send", "http://127.0.0.1:1/unused", "--list-samples")
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == samples.names()


def test_send_list_samples_needs_no_url() -> None:
    done = cli("send", "--list-samples")
    assert done.returncode == 0, done.stderr
    names = lines(done.stdout)
    assert names == samples.names()
    assert {"delivered", "delivered-undelivered", "batch-mixed", "inbound"} <= set(names)
