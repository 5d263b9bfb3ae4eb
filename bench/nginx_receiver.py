"""The end-to-end receiver: Debian's nginx answering ``204`` and logging each arrival's time.

    receiver = NginxReceiver(workdir, cpus="1").start()
    receiver.url               # http://127.0.0.1:PORT
    receiver.reset()           # count only what arrives from now on
    receiver.stats()           # Arrivals(count, first, last, paths)
    receiver.stop()

Our own nginx instance (``nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'``), one worker, on
an ephemeral loopback port, with its own prefix, pid file, temp paths and logs in `workdir`;
it never touches the system's nginx. Every request is answered ``204`` (``return 204;``, the
body is read and discarded) and logged as ``$msec $status $request_uri`` (the arrival time in
epoch seconds with millisecond resolution first), so delivered/s is the number of log lines
divided by the span between the first and the last arrival. nginx costs a few microseconds
per request, so the receiver takes almost nothing from the CPU the load generator shares.
Stopped by its PID (SIGQUIT: finish, flush the log, exit).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_intake import free_port

CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 8192; multi_accept on; }}
http {{
    log_format arrivals '$msec $status $request_uri';
    access_log {dir}/arrivals.log arrivals;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_buffer_size 1m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 204; }}
    }}
}}
"""


@dataclass
class Arrivals:
    """What the receiver logged since the last reset."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0
    paths: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Arrivals per second over the span from the first to the last one."""
        span = self.last - self.first
        return (self.count - 1) / span if self.count > 1 and span > 0 else 0.0


def nginx_binary() -> str | None:
    """The nginx executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


class NginxReceiver:
    """One nginx instance this script started, in its own directory, stopped by its PID."""

    def __init__(self, workdir: Path, pin: list[str] | None = None) -> None:
        self.dir = workdir
        self.pin = pin or []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "arrivals.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self, timeout: float = 10.0) -> NginxReceiver:
        binary = nginx_binary()
        if binary is None:
            raise SystemExit("bench needs nginx (Debian: apt-get install nginx)")
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.dir / "nginx.conf"
        conf.write_text(CONF.format(dir=self.dir, port=self.port, user=user))
        self.log.touch()
        with open(self.dir / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(
                [*self.pin, binary, "-p", str(self.dir), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"nginx exited; see {self.dir / 'error.log'}")
            try:
                httpx.get(self.url + "/ready", timeout=1.0)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            self.stop()
            raise SystemExit(f"nginx did not start in {timeout}s; see {self.dir / 'error.log'}")
        self.reset()
        return self

    def reset(self) -> None:
        """Count only arrivals logged after this call."""
        self._offset = self.log.stat().st_size

    def stats(self) -> Arrivals:
        a = Arrivals()
        with open(self.log, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written is counted next time
        for line in data[:end].splitlines():
            msec, _status, path = line.split(b" ", 2)
            t = float(msec)
            if a.count == 0:
                a.first = t
            a.count += 1
            a.last = max(a.last, t)
            a.first = min(a.first, t)
            key = path.decode()
            a.paths[key] = a.paths.get(key, 0) + 1
        return a

    def wait_quiet(
        self, expected: int, timeout: float, quiet: float = 1.5, patience: float = 5.0
    ) -> Arrivals:
        """Wait until at least `expected` arrivals are logged and nothing more arrives for
        `quiet` seconds, or nothing arrives for `patience` seconds, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            st = self.stats()
            now = time.monotonic()
            if st.count != last:
                last, since = st.count, now
            idle = now - since
            if (st.count >= expected and idle >= quiet) or idle >= patience or now > deadline:
                return st
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: to this PID, nginx's master
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
