"""A serving gateway freezes its start-up heap for the garbage collector (`gateway.cli.run`).

Checked inside real `python -m gateway run` processes, one worker and two: a plugin's
`enrich_event` hook, which runs in the process that routes the event, writes down that process's
collector state when a callback arrives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from e2e_helpers import event
from gateway_process import GatewayProcess

from gateway.cli.startup import GC_GEN0_THRESHOLD

PROBE = """
import gc, json, os
from gateway import hookimpl


@hookimpl
def enrich_event(event, meta):
    state = {"frozen": gc.get_freeze_count(), "gen0": gc.get_threshold()[0]}
    # Written aside, then renamed: the test must never read a half-written file.
    with open(f"gc-{os.getpid()}.tmp", "w") as f:
        json.dump(state, f)
    os.replace(f"gc-{os.getpid()}.tmp", f"gc-{os.getpid()}.json")
    return None
"""

CONFIG = """
server: {{host: 127.0.0.1, workers: {workers}}}
store: sqlite:///var/gateway.db
plugins: [gc_probe]
sources:
  revicom:
    path: /callbacks/revicom
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_the_serving_process_has_frozen_its_start_up_heap(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path, workers: int
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "gc_probe.py").write_text(PROBE)
    gw = gateway_factory(CONFIG.format(workers=workers), env={"PYTHONPATH": str(plugins)})
    answer = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps([event()]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200
    deadline = time.monotonic() + 20
    while not (found := list(tmp_path.glob("gc-*.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the router to run the hook, not timing it
    assert found, f"the probe never ran:\n{gw.logs()}"
    state = json.loads(found[0].read_text())
    # Start-up (Sanic, pydantic models, Jinja, plugins) is thousands of objects; unfrozen is 0.
    assert state["frozen"] > 1000
    assert state["gen0"] == GC_GEN0_THRESHOLD
