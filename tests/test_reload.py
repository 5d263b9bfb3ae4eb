"""Configuration reload of a real gateway: SIGHUP and `callback-gateway reload`.

A valid changed file takes effect (new source path, new route and destination); a broken one is
refused with its problems logged by key and the old configuration keeps serving; the CLI
validates before it signals; no request is dropped while reloads happen.

The tests share one gateway and run in file order; each writes the configuration it needs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from e2e_helpers import eventually, status
from gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}

BASE = """
server: {host: 127.0.0.1}
store: sqlite:///var/gateway.db
sources:
  first:
    path: /callbacks/first
destinations:
  archive: {type: file, path: var/archive.jsonl}
routes:
  - name: archive
    to: [archive]
"""

WITH_SECOND = BASE.replace(
    """destinations:""",
    """  second:
    path: /callbacks/second
destinations:
  reads: {type: file, path: var/reads.jsonl}""",
).replace(
    """routes:""",
    """routes:
  - name: reads
    match: {callback_event: read}
    to: [reads]""",
)

BROKEN = BASE.replace("path: /callbacks/first", "pathh: /callbacks/first").replace(
    "to: [archive]", "to: [archive, nowhere]"
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(BASE, tmp_path_factory.mktemp("reload")).start()
    yield proc
    proc.kill()


def post(gw: GatewayProcess, path: str, *elements: Any) -> httpx.Response:
    return httpx.post(f"{gw.base}{path}", content=json.dumps(list(elements)), headers=JSON)


def jsonl(gw: GatewayProcess, name: str) -> list[dict[str, Any]]:
    path = gw.workdir / "var" / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def reloads(gw: GatewayProcess, what: str = "reload: configuration loaded") -> int:
    return gw.logs().count(what)


def hup(gw: GatewayProcess, text: str) -> None:
    """Write `text` as the config file and send SIGHUP."""
    gw.config_path.write_text(text)
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGHUP)


def cli_reload(gw: GatewayProcess) -> subprocess.CompletedProcess[str]:
    # Run where the gateway runs: the pid file (server.pid_file) is relative to that directory.
    return subprocess.run(
        [sys.executable, "-m", "gateway", "reload", "-c", "gateway.yaml"],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sighup_with_a_valid_file_adds_a_source_a_route_and_a_destination(gw):
    assert post(gw, "/callbacks/second", status("read")).status_code == 404
    loaded = reloads(gw)
    hup(gw, WITH_SECOND)
    eventually(lambda: reloads(gw) > loaded, what="the reload to be logged")
    assert "(2 sources, 2 destinations, 2 routes)" in gw.logs()

    event = status("read")
    assert post(gw, "/callbacks/second", event).status_code == 200
    [line] = eventually(
        lambda: [x for x in jsonl(gw, "reads.jsonl") if x["event"] == event],
        what="the new route to deliver",
    )
    assert line["source"] == "second" and line["route"] == "reads"
    eventually(lambda: [x for x in jsonl(gw, "archive.jsonl") if x["event"] == event])

    # Taking it out again removes the path.
    loaded = reloads(gw)
    hup(gw, BASE)
    eventually(lambda: reloads(gw) > loaded)
    assert post(gw, "/callbacks/second", status("read")).status_code == 404
    assert post(gw, "/callbacks/first", status()).status_code == 200


def test_sighup_with_a_broken_file_is_refused_and_the_old_config_keeps_serving(gw):
    refused = reloads(gw, "reload refused: the previous configuration keeps serving")
    hup(gw, BROKEN)
    assert post(gw, "/callbacks/first", status()).status_code == 200  # during
    eventually(
        lambda: reloads(gw, "reload refused: the previous configuration keeps serving") > refused,
        what="the refusal to be logged",
    )
    problems = [line for line in gw.logs().splitlines() if "reload refused: " in line]
    assert any("sources.first.pathh" in line for line in problems), problems
    unknown = "routes[0].to[1]: no destination named 'nowhere'"
    assert any(unknown in line for line in problems), problems
    event = status()
    assert post(gw, "/callbacks/first", event).status_code == 200  # after
    eventually(
        lambda: [x for x in jsonl(gw, "archive.jsonl") if x["event"] == event],
        what="the old route to keep delivering",
    )


def test_the_reload_verb_validates_first_and_signals_only_a_valid_file(gw):
    gw.config_path.write_text(BROKEN)
    invalid = cli_reload(gw)
    assert invalid.returncode == 2
    assert "sources.first.pathh" in invalid.stderr
    assert "asked the gateway" not in invalid.stderr

    loaded = reloads(gw)
    refused = reloads(gw, "reload refused: the previous configuration keeps serving")
    gw.config_path.write_text(WITH_SECOND)
    valid = cli_reload(gw)
    assert valid.returncode == 0, valid.stderr
    assert f"asked the gateway (pid {gw.proc.pid}) to reload it" in valid.stderr
    eventually(lambda: reloads(gw) > loaded, what="the reload to be logged")
    # Signals arrive in order: had the invalid file been signalled, its refusal would be logged
    # before this reload.
    assert reloads(gw, "reload refused: the previous configuration keeps serving") == refused
    assert post(gw, "/callbacks/second", status("read")).status_code == 200


def test_the_reload_verb_without_a_running_gateway_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "gateway.yaml").write_text(BASE)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "reload", "-c", "gateway.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "no running gateway found through var/gateway.pid" in done.stderr


def test_no_request_is_dropped_while_reloads_happen(gw):
    loaded = reloads(gw)
    sent: list[str] = []
    hups = 0
    with httpx.Client(timeout=10, headers=JSON) as client:
        for i in range(200):
            if i % 20 == 10:
                hup(gw, WITH_SECOND if hups % 2 else BASE)
                hups += 1
            event = status()
            answer = client.post(f"{gw.base}/callbacks/first", content=json.dumps([event]))
            assert answer.status_code == 200, (i, answer.text)
            sent.append(event["message_uuid"])
    eventually(lambda: reloads(gw) >= loaded + 1, what="the reloads to be logged")
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        stored = {r[0] for r in db.execute("SELECT message_uuid FROM events")}
    assert set(sent) <= stored
    # And they are all delivered once the reloads settle (old engines finished or released).
    eventually(
        lambda: set(sent) <= {x["event"]["message_uuid"] for x in jsonl(gw, "archive.jsonl")},
        timeout=20,
        what="every event to be delivered",
    )
