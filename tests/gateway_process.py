"""A real gateway server in a subprocess, for end-to-end and crash tests.

`GatewayProcess(config_text, workdir).start()` writes the config, runs
``python -m gateway run -c gateway.yaml --port N`` in `workdir`, and waits until ``/readyz``
answers. `kill()` sends SIGKILL (a crash), `stop()` SIGTERM (a clean shutdown).

Each gateway runs in its own process group (session), so that `kill()` also ends the worker
processes of a multi-worker gateway and nothing is left running after a test; `kill_main()`
kills the ``run`` process alone, as a crash of it would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    def __init__(
        self,
        config_text: str,
        workdir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.args = list(args or [])
        self.config_path = self.workdir / "gateway.yaml"
        self.config_path.write_text(config_text)
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.env.pop("CALLBACK_GATEWAY_TRACE_PLUGINS", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "gateway.log"
        self._log = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, userinfo: str | None = None) -> str:
        host = f"{userinfo}@127.0.0.1" if userinfo else "127.0.0.1"
        return f"http://{host}:{self.port}{path}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(self.config_path),
                "--port",
                str(self.port),
                *self.args,
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: see kill()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # readiness polling, not timing
        self.kill()
        raise RuntimeError(f"gateway did not become ready in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def descendants(self) -> list[int]:
        """Pids of the processes the gateway started (workers and their helpers), and theirs."""
        found: list[int] = []
        todo = [self.proc.pid] if self.proc is not None else []
        while todo:
            pid = todo.pop()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    kids = [int(k) for k in children.read_text().split()]
                except OSError:
                    continue
                found += kids
                todo += kids
        return found

    def kill_main(self) -> None:
        """SIGKILL to the ``run`` process alone (its workers are not signalled)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def kill(self) -> None:
        """SIGKILL to the gateway's whole process group: no process gets to clean up, and
        none is left behind."""
        if self.proc is not None:
            self._kill_group()
        self._reap()

    def _kill_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group the gateway leads

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self._reap(timeout)
        self._kill_group()  # anything of its group that outlived it
        return code

    def _reap(self, timeout: float = 30.0) -> int:
        code = -1
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
