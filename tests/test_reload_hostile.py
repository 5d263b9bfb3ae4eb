"""Reloading a hostile or heavy configuration file on a real gateway (gateway/server/reload.py):
the serving loop keeps answering, the process does not grow, SIGTERM works in the middle of a
reload, and the previous configuration keeps serving."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_process import GatewayProcess
from test_config_yaml import alias_bomb

pytestmark = pytest.mark.slow

TOKEN = "reload-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = f"""
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
admin: {{token: {TOKEN}}}
sources:
  revicom: {{path: /callbacks/revicom}}
"""
#: About 99,000 nodes: within the parser's limits, so validating it takes seconds of CPU.
HEAVY = CONFIG + "padding: [" + "a, " * 99_000 + "]\n"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def reload_in_background(gw: GatewayProcess) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["response"] = httpx.post(f"{gw.base}/admin/reload", headers=BEARER, timeout=60)
        except httpx.HTTPError as e:
            result["error"] = e

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


def health_latencies(gw: GatewayProcess, thread: threading.Thread, limit: int = 400) -> list[float]:
    """Time /healthz answers while `thread` (a reload) runs."""
    took = []
    with httpx.Client(timeout=10) as client:
        while thread.is_alive() and len(took) < limit:
            started = time.monotonic()
            assert client.get(f"{gw.base}/healthz").status_code == 200
            took.append(time.monotonic() - started)
    return took


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway for the tests that leave it serving (they run in file order)."""
    gw = GatewayProcess(CONFIG, tmp_path_factory.mktemp("reload-hostile")).start()
    yield gw
    gw.kill()


def test_an_alias_bomb_reload_is_refused_and_the_gateway_keeps_serving(
    shared: GatewayProcess,
) -> None:
    gw = shared
    assert gw.proc is not None
    before = rss_mib(gw.proc.pid)
    # The reproduction: the bomb appended to the running gateway's file.
    gw.config_path.write_text(CONFIG + "\n".join(alias_bomb().splitlines()[1:]) + "\n")
    thread, result = reload_in_background(gw)
    latencies = health_latencies(gw, thread)
    thread.join(60)
    answer = result["response"]
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert "expands to more than 100,000 nodes" in problem
    assert max(latencies, default=0) < 1.0  # before: /healthz silent for 12+ s
    assert rss_mib(gw.proc.pid) < before + 50  # before: 68 MB -> 1.46 GB
    ok = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps([{"x": 1}]),
        headers={"Content-Type": "application/json"},
    )
    assert ok.status_code == 200  # the previous configuration keeps serving


def test_a_heavy_valid_reload_does_not_stall_the_loop(shared: GatewayProcess) -> None:
    gw = shared
    heavy_but_valid = CONFIG + "".join(f"  s{i}: {{path: /callbacks/s{i}}}\n" for i in range(1000))
    gw.config_path.write_text(heavy_but_valid)
    thread, result = reload_in_background(gw)
    latencies = health_latencies(gw, thread)
    thread.join(60)
    assert result["response"].status_code == 200, result["response"].text
    assert max(latencies) < 1.0
    assert (
        httpx.post(
            f"{gw.base}/callbacks/s999", content="[]", headers={"Content-Type": "application/json"}
        ).status_code
        == 200
    )


def test_sigterm_in_the_middle_of_a_heavy_reload_exits_cleanly(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory(CONFIG)
    assert gw.proc is not None
    gw.config_path.write_text(HEAVY)
    thread, _ = reload_in_background(gw)
    # Wait until the validating child process runs, then measure the loop while it works.
    deadline = time.monotonic() + 20
    while not children(gw.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for a process to appear, not timing
    validating = children(gw.proc.pid)
    assert validating, "no validating child process was started"
    latencies = health_latencies(gw, thread, limit=20)
    assert latencies and max(latencies) < 1.0
    assert thread.is_alive(), "the reload finished before SIGTERM; HEAVY is too light"
    started = time.monotonic()
    assert gw.stop(timeout=20) == 0
    assert time.monotonic() - started < 15
    thread.join(30)
    for pid in validating:  # the child was ended with the reload, not left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
