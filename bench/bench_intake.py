"""Intake throughput and ack latency: the gateway's durable intake next to a bare Sanic app.

    .venv/bin/python bench/bench_intake.py [--duration 10] [--connections 1,32,256]

In one run, one target at a time on 127.0.0.1:

- ``bare-sanic``: bench/bare_sanic.py, parses the JSON and answers 200 (the framework ceiling);
- ``gateway``: ``python -m gateway run`` with one source behind Basic auth, the SQLite store
  (WAL, synchronous=FULL, group commit) and, unless ``--routes none``, one route to a ``file``
  destination, so the router and delivery engine run in the same process during the load.

Load: wrk (bench/intake_post.lua) when installed, else an aiohttp closed-loop generator. Every
request is a distinct contract-shaped ``delivered`` callback (new message_uuid) with Basic auth.
Prints requests/s, p50/p99 ack latency per target and connection count, and gateway/bare ratios.

Only loopback traffic; every phase is bounded by ``--duration``; the servers it starts are
stopped by PID at the end (also on error or Ctrl-C). Results depend heavily on the machine: the
load generator shares its CPUs with the server under test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
USER, PASSWORD = "bench", "bench-p@ss"
PATH = "/callbacks/revicom"
EVENT = (
    '[{{"message_uuid":"{id}","channel_type":"SMS","callback_event":"delivered",'
    '"status":"delivered","status_time":"2020-10-16T18:51:13Z"}}]'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess this script started; stopped by its PID only."""

    def __init__(
        self, name: str, argv: list[str], cwd: Path, port: int, ready_path: str = "/readyz"
    ) -> None:
        self.name, self.argv, self.cwd, self.port = name, argv, cwd, port
        self.ready_path = ready_path
        self.log_path = cwd / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 30.0) -> Server:
        import httpx

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(self.url(self.ready_path), timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"{self.name} did not become ready in {timeout}s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The server process and its descendants (Sanic's workers when `workers` > 1)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        tree, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, []))
        return tree

    def rss_mib(self) -> float:
        """Resident memory of the server's processes (VmRSS from /proc/PID/status), in MiB."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server's processes have used so far."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM to this PID
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Result:
    target: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# -- load generators ------------------------------------------------------------------------------


def run_wrk(
    url: str, connections: int, duration: float, prefix: str
) -> tuple[int, float, float, float, int]:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    # One wrk thread: on a small machine every core wrk takes is one the server lacks.
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(BENCH / "intake_post.lua"), url, "--", prefix, token,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
    d = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(
        d[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return d["requests"], d["duration_us"] / 1e6, d["p50_us"] / 1e3, d["p99_us"] / 1e3, errors


async def _aiohttp_load(
    url: str, connections: int, duration: float, prefix: str
) -> tuple[int, float, float, float, int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    auth = aiohttp.BasicAuth(USER, PASSWORD)
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auth=auth) as session:
        deadline = time.perf_counter() + duration

        async def worker(n: int) -> None:
            nonlocal errors
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                data = EVENT.format(id=f"{prefix}-{n}-{i}").encode()
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as r:
                        await r.read()
                        ok = 200 <= r.status < 300
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(connections)))
        seconds = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3 if latencies else 0.0
        )

    return len(latencies) + errors, seconds, pct(0.50), pct(0.99), errors


def load(
    tool: str, url: str, connections: int, duration: float, prefix: str
) -> tuple[int, float, float, float, int]:
    if tool == "wrk":
        return run_wrk(url, connections, duration, prefix)
    return asyncio.run(_aiohttp_load(url, connections, duration, prefix))


# -- targets --------------------------------------------------------------------------------------


def source_config(port: int, workers: int = 1) -> str:
    """The benchmarked gateway's server, SQLite store and one revicom source with Basic auth
    (bench/run.py adds its destinations and routes to this)."""
    return f"""\
server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: {PATH}
    format: revicom
    auth:
      basic: {{username: {USER}, password: "{PASSWORD}"}}
"""


def gateway_config(port: int, routes: str) -> str:
    text = source_config(port)
    if routes == "file":
        text += """\
destinations:
  archive: {type: file, path: var/events.jsonl}
routes:
  - name: archive
    to: [archive]
"""
    return text


def measure(
    server: Server, tool: str, conns: list[int], duration: float, warmup: float
) -> list[Result]:
    results = []
    url = server.url(PATH)
    run_id = f"{server.name}-{os.getpid()}-{int(time.time())}"
    if warmup > 0:
        load(tool, url, max(conns), warmup, f"{run_id}-warmup")
    for c in conns:
        requests, seconds, p50, p99, errors = load(tool, url, c, duration, f"{run_id}-c{c}")
        r = Result(server.name, c, requests, seconds, p50, p99, errors)
        print(
            f"  {r.target:<10} c={c:<4} {r.rps:>9.0f} req/s  p50 {p50:6.2f} ms"
            f"  p99 {p99:6.2f} ms  errors {errors}",
            flush=True,
        )
        results.append(r)
    return results


def stored_events(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db, timeout=30)) as c:
        return dict(c.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())


def table(results: list[Result], conns: list[int]) -> str:
    rows = [f"{'target':<11}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    for r in results:
        rows.append(
            f"{r.target:<11}{r.connections:>6}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
        )
    by = {(r.target, r.connections): r for r in results}
    rows.append("")
    rows.append(f"{'gateway/bare':<17}{'req/s':>10}{'p50':>9}{'p99':>9}")
    for c in conns:
        g, b = by.get(("gateway", c)), by.get(("bare-sanic", c))
        if g and b and b.rps and b.p50_ms and b.p99_ms:
            rows.append(
                f"{'c=' + str(c):<17}{g.rps / b.rps:>9.0%}"
                f" {g.p50_ms / b.p50_ms:>8.1f}x{g.p99_ms / b.p99_ms:>8.1f}x"
            )
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(
        description="Intake throughput and ack latency, gateway vs bare Sanic."
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (2)")
    p.add_argument("--connections", default="1,32", help="comma-separated (1,32); 256 optional")
    p.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto")
    p.add_argument(
        "--routes",
        choices=["file", "none"],
        default="file",
        help="gateway config: one route to a file destination (default) or no routes",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    tool = ("wrk" if shutil.which("wrk") else "aiohttp") if args.tool == "auto" else args.tool

    work = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    (work / "bare").mkdir()
    (work / "gw").mkdir()
    print(
        f"bench_intake: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, tool {tool},"
        f" {args.duration:g}s per run, gateway routes: {args.routes}, workdir {work}",
        flush=True,
    )
    results: list[Result] = []
    servers: list[Server] = []
    try:
        bare_port = free_port()
        bare = Server(
            "bare-sanic",
            [sys.executable, str(BENCH / "bare_sanic.py"), "--port", str(bare_port)],
            work / "bare",
            bare_port,
        )
        servers.append(bare)
        bare.start()
        results += measure(bare, tool, conns, args.duration, args.warmup)
        bare.stop()

        gw_port = free_port()
        (work / "gw" / "gateway.yaml").write_text(gateway_config(gw_port, args.routes))
        gw = Server(
            "gateway",
            [sys.executable, "-m", "gateway", "run", "-c", "gateway.yaml"],
            work / "gw",
            gw_port,
        )
        servers.append(gw)
        gw.start()
        results += measure(gw, tool, conns, args.duration, args.warmup)
        gw.stop()
        acked = sum(r.requests - r.errors for r in results if r.target == "gateway")
        states = stored_events(work / "gw" / "var" / "gateway.db")
        print(
            f"  gateway store: {sum(states.values())} events {states}"
            f" (measured 2xx: {acked}, plus warm-up and requests cut off at the end of a run)"
        )
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results, conns))
    print(
        "\nNote: load generator and server share this machine's CPUs; on a 2-core machine the"
        " generator takes a large share of the CPU the server would otherwise use."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
