"""Worker processes of a multi-worker gateway (`gateway.server.lifeline`): they end when the
``run`` process that started them dies, so a restarted gateway never runs beside orphans."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from gateway_process import GatewayProcess

CONFIG = """
server: {host: 127.0.0.1, workers: 2}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
"""


def alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one read
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def test_workers_exit_when_the_run_process_is_killed(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(CONFIG)
    children = gw.descendants()
    assert len(children) >= 3, children  # two workers and Sanic's manager (and a tracker)
    gw.kill_main()
    deadline = time.monotonic() + 20
    while (left := [p for p in children if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the children to go, not timing them
    assert not left, f"still running after the run process died: {left}\n{gw.logs()}"
    assert os.getpgid(os.getpid()) != gw.proc.pid  # the check above did not rely on killpg
