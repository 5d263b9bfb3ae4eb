"""The whole benchmark suite in one command: ceiling, durable intake, end to end, drain, memory.

    .venv/bin/python bench/run.py            # full run, about 15 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # a smoke run, about 3 minutes, smaller backlogs
    .venv/bin/python bench/run.py --phases bare,intake --connections 32   # one part only

One run, one machine, one target at a time, all on 127.0.0.1 (see docs/performance.md):

1. ``bare-sanic``: bench/bare_sanic.py parses the JSON and answers 200 (the framework ceiling);
2. ``gateway``: durable intake (Basic auth, validation, dedupe, SQLite WAL + synchronous=FULL
   group commit; the router runs, no routes), with resident memory idle and under load;
3. ``gw-history``: the same intake at 32 connections on a store already holding `--history`
   routed events and their dedupe keys (does intake slow down as the store fills?);
4. ``e2e-1`` / ``e2e-3``: the gateway with one / three webhook destinations per event, all on
   bench/e2e_receiver.py, which measures receiver arrival minus post time;
5. ``node-red``: http in -> http response + http request to the same receiver (if installable);
6. drain: `--drain` deliveries queued in the SQLite file (bench/fill_backlog.py), then the
   gateway started: deliveries/s until the receiver has them all;
7. memory with `--backlog` pending deliveries: VmRSS of the gateway after start and while it
   drains.

Load: wrk (bench/intake_post.lua, one thread, every request a distinct callback) at each of
`--connections`. Every phase is bounded in time; the servers started here are stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import node_red  # noqa: E402
from bench_intake import (  # noqa: E402
    PATH,
    Server,
    free_port,
    run_wrk,
    source_config,
)
from fill_backlog import fill, fill_history  # noqa: E402

PHASES = ("bare", "intake", "history", "e2e1", "e2e3", "node-red", "drain", "backlog")


@dataclass
class Row:
    target: str
    conns: int
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    errors: int = 0
    e2e_rate: float | None = None
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    note: str = ""
    #: Server CPU time (all threads) per acknowledged request, microseconds.
    cpu_us: float = 0.0


class RssSampler:
    """Samples a server's VmRSS every 0.2 s in a thread; `peak` is the largest seen."""

    def __init__(self, server: Server) -> None:
        self.server, self.peak = server, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mib())
            self._stop.wait(0.2)


class Receiver:
    """bench/e2e_receiver.py in a subprocess, stopped by its PID."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "e2e_receiver.py")], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.base = f"http://127.0.0.1:{self.proc.stdout.readline().split()[1]}"

    def reset(self) -> None:
        httpx.post(self.base + "/reset", timeout=5)

    def stats(self) -> dict:
        return httpx.get(self.base + "/stats", timeout=30).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# -- configuration ---------------------------------------------------------------------------


def gateway_config(
    port: int,
    receiver: str | None,
    destinations: int,
    concurrency: int | None,
    log_level: str | None = None,
    workers: int = 1,
) -> str:
    text = source_config(port, workers)
    if concurrency:
        text += f"delivery: {{concurrency: {concurrency}}}\n"
    if log_level:
        text += f"log_level: {log_level}\n"
    if receiver and destinations:
        names = [f"hook{i}" for i in range(1, destinations + 1)]
        text += "destinations:\n"
        text += "".join(f"  {n}: {{type: webhook, url: '{receiver}/{n}'}}\n" for n in names)
        text += f"routes:\n  - name: bench\n    to: [{', '.join(names)}]\n"
    return text


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.rows: list[Row] = []
        self.memory: dict[str, float] = {}
        self.notes: list[str] = []
        self.servers: list[Server] = []
        self.receiver: Receiver | None = None
        self._runs = 0

    def server(self, name: str, argv: list[str], ready: str = "/readyz", port: int = 0) -> Server:
        cwd = self.work / name
        cwd.mkdir(parents=True, exist_ok=True)
        s = Server(name, argv, cwd, port or free_port(), ready)
        self.servers.append(s)
        return s

    def gateway(self, name: str, destinations: int = 0, db: Path | None = None) -> Server:
        port = free_port()
        # BENCH_GATEWAY_PYTHON (e.g. "python -X importtime") lets an experiment wrap the gateway.
        python = os.environ.get("BENCH_GATEWAY_PYTHON", sys.executable).split()
        s = self.server(name, [*python, "-m", "gateway", "run", "-c", "gateway.yaml"], port=port)
        assert self.receiver is not None
        (s.cwd / "gateway.yaml").write_text(
            gateway_config(
                port,
                self.receiver.base,
                destinations,
                self.args.delivery_concurrency,
                self.args.log_level,
                self.args.workers,
            )
        )
        if db is not None:
            (s.cwd / "var").mkdir(exist_ok=True)
            db.rename(s.cwd / "var" / "gateway.db")
        return s

    def wrk(
        self, server: Server, conns: int, seconds: float
    ) -> tuple[int, float, float, float, int]:
        self._runs += 1
        prefix = f"{server.name}-{os.getpid()}-{self._runs}"
        return run_wrk(server.url(PATH), conns, seconds, prefix)

    # -- phases ----------------------------------------------------------------------------

    def intake(self, server: Server, conns: list[int]) -> None:
        if self.args.warmup:
            self.wrk(server, max(conns), self.args.warmup)
        for c in conns:
            cpu = server.cpu_seconds()
            n, secs, p50, p99, errors = self.wrk(server, c, self.args.duration)
            cpu = (server.cpu_seconds() - cpu) / max(1, n - errors) * 1e6
            self.add(Row(server.name, c, n / secs, p50, p99, errors, cpu_us=cpu))

    def end_to_end(self, server: Server, conns: int, per_event: int, db: Path | None) -> None:
        assert self.receiver is not None
        if self.args.warmup:
            self.wrk(server, conns, self.args.warmup)
            if db is not None:
                self.wait_drained(db)
        self.receiver.reset()
        started = time.time()
        cpu = server.cpu_seconds()
        n, secs, p50, p99, errors = self.wrk(server, conns, self.args.duration)
        if db is not None:
            self.wait_drained(db)
        else:  # no store to ask: wait until the receiver stops getting requests
            last = -1
            while (count := self.receiver.stats()["count"]) != last:
                last = count
                time.sleep(1.0)
        cpu = server.cpu_seconds() - cpu
        st = self.receiver.stats()
        events = st["count"] / per_event
        rate = events / (st["last"] - started) if st["count"] else 0.0
        note = f"{st['count']} deliveries for {n - errors} acks"
        self.add(
            Row(
                server.name,
                conns,
                n / secs,
                p50,
                p99,
                errors,
                rate,
                st["p50_ms"],
                st["p99_ms"],
                note,
                cpu / max(1, n - errors) * 1e6,
            )
        )

    def wait_drained(self, db: Path) -> None:
        deadline = time.monotonic() + self.args.drain_timeout
        while time.monotonic() < deadline:
            if queued(db) == 0:
                return
            time.sleep(0.5)
        self.notes.append(f"{db}: not drained within {self.args.drain_timeout:g}s")

    def add(self, row: Row) -> None:
        self.rows.append(row)
        e2e = ""
        if row.e2e_rate is not None:
            e2e = (
                f"  e2e {row.e2e_rate:7.0f} ev/s p50 {row.e2e_p50 or 0:7.1f} ms"
                f" p99 {row.e2e_p99 or 0:7.1f} ms ({row.note})"
            )
        print(
            f"  {row.target:<11} c={row.conns:<4}{row.rps:>8.0f} req/s  ack p50"
            f" {row.p50:6.2f} ms p99 {row.p99:7.2f} ms  errors {row.errors}"
            f"  cpu {row.cpu_us:5.0f} us/req{e2e}",
            flush=True,
        )

    def run(self) -> None:
        a = self.args
        self.receiver = Receiver()
        phases = a.phases

        if "bare" in phases:
            print("[bare] bare Sanic (ceiling)", flush=True)
            port = free_port()
            argv = [sys.executable, str(BENCH / "bare_sanic.py"), "--port", str(port)]
            bare = self.server("bare-sanic", argv, port=port).start()
            self.intake(bare, a.connections)
            bare.stop()

        if "intake" in phases:
            print("[intake] gateway durable intake (router running, no routes)", flush=True)
            gw = self.gateway("gateway").start()
            time.sleep(1.0)
            self.memory["idle (started, empty store)"] = gw.rss_mib()
            with RssSampler(gw) as rss:
                self.intake(gw, a.connections)
            self.memory["under load (peak during intake runs)"] = rss.peak
            gw.stop()

        if "history" in phases:
            print(f"[history] durable intake on a store holding {a.history} events", flush=True)
            db = self.work / "history.db"
            secs = fill_history(db, a.history)
            size = db.stat().st_size / 2**20
            print(f"  stored {a.history} events in {secs:.1f}s ({size:.0f} MiB file)", flush=True)
            gw = self.gateway("gw-history", db=db).start(timeout=120)
            with RssSampler(gw) as rss:
                self.intake(gw, [32])
            self.memory[f"intake on a store holding {a.history} events (peak)"] = rss.peak
            gw.stop()

        for per_event in (1, 3):
            if f"e2e{per_event}" not in phases:
                continue
            print(f"[e2e{per_event}] end to end: intake -> {per_event} webhook(s)", flush=True)
            e2e = self.gateway(f"e2e-{per_event}", per_event).start()
            with RssSampler(e2e) as rss:
                for c in a.e2e_connections:
                    self.end_to_end(e2e, c, per_event, e2e.cwd / "var" / "gateway.db")
            self.memory[f"under load, e2e with {per_event} destination(s) (peak)"] = rss.peak
            e2e.stop()

        if "node-red" in phases:
            print("[node-red] http in -> http response + http request", flush=True)
            self.node_red()

        if "drain" in phases:
            print(f"[drain] backlog drain: {a.drain} queued deliveries", flush=True)
            self.drain(a.drain)

        if "backlog" in phases:
            print(f"[backlog] memory with {a.backlog} pending deliveries", flush=True)
            self.backlog(a.backlog)

    def node_red(self) -> None:
        if self.args.no_node_red:
            self.notes.append("node-red: skipped (--no-node-red)")
            return
        reason = node_red.ensure_installed()
        if reason is not None:
            print(f"  node-red skipped: {reason}", flush=True)
            self.notes.append(f"node-red: skipped ({reason})")
            return
        assert self.receiver is not None
        port = free_port()
        argv = node_red.prepare(self.work / "node-red", port, PATH, self.receiver.base + "/nr")
        s = self.server("node-red", argv, ready="/", port=port).start(timeout=60)
        for c in self.args.e2e_connections:
            self.end_to_end(s, c, 1, None)
        self.notes.append(f"node-red {node_red.version()}: no persistence, no retry, no auth")
        s.stop()

    def drain(self, n: int) -> None:
        assert self.receiver is not None
        db = self.work / "drain.db"
        secs = fill(db, n, ["hook1"], "bench")
        print(f"  queued {n} deliveries in {secs:.1f}s", flush=True)
        self.receiver.reset()
        s = self.gateway("drain", 1, db)
        s.start()
        cpu = s.cpu_seconds()
        with RssSampler(s) as rss:
            deadline = time.monotonic() + self.args.drain_timeout
            while self.receiver.stats()["count"] < n and time.monotonic() < deadline:
                time.sleep(0.5)
        st = self.receiver.stats()
        cpu_us = (s.cpu_seconds() - cpu) / max(1, st["count"]) * 1e6
        s.stop()
        rate = (st["count"] - 1) / (st["last"] - st["first"]) if st["count"] > 1 else 0.0
        self.drain_result = (n, st["count"], rate, rss.peak, cpu_us)
        print(
            f"  drained {st['count']}/{n} at {rate:.0f} deliveries/s, peak RSS {rss.peak:.0f} MiB,"
            f" cpu {cpu_us:.0f} us/delivery",
            flush=True,
        )
        self.memory[f"draining {n} queued deliveries (peak)"] = rss.peak

    def backlog(self, n: int) -> None:
        db = self.work / "backlog.db"
        secs = fill(db, n, ["hook1"], "bench")
        size = db.stat().st_size / 2**20
        print(f"  queued {n} deliveries in {secs:.1f}s ({size:.0f} MiB file)", flush=True)
        s = self.gateway("backlog", 1, db).start(timeout=120)
        ready = s.rss_mib()
        with RssSampler(s) as rss:
            time.sleep(self.args.duration)
        s.stop()
        self.memory[f"{n} pending deliveries: after start"] = ready
        self.memory[f"{n} pending deliveries: peak while draining for {self.args.duration:g}s"] = (
            rss.peak
        )

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()
        if self.receiver is not None:
            self.receiver.stop()


def queued(db: Path) -> int:
    """Events not yet routed plus deliveries not yet finished (read-only, WAL allows it)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as c:
        events = c.execute("SELECT COUNT(*) FROM events WHERE state = 'received'").fetchone()[0]
        deliveries = c.execute(
            "SELECT COUNT(*) FROM deliveries WHERE state IN ('pending', 'in_flight')"
        ).fetchone()[0]
    return int(events + deliveries)


# -- report ----------------------------------------------------------------------------------


def report(b: Bench) -> str:
    def ms(v: float | None) -> str:
        return f"{v:.1f}" if v is not None else "-"

    bare = {r.conns: r.rps for r in b.rows if r.target == "bare-sanic"}
    ceiling = bare.get(32) or max(bare.values(), default=0.0)
    out = [
        f"{'target':<12}{'conns':>6}{'req/s':>9}{'ack p50':>9}{'ack p99':>9}{'err':>5}"
        f"{'e2e ev/s':>10}{'e2e p50':>9}{'e2e p99':>9}{'req/s÷bare':>12}{'e2e÷ceil':>10}",
        f"{'':<12}{'':>6}{'':>9}{'ms':>9}{'ms':>9}{'':>5}{'':>10}{'ms':>9}{'ms':>9}"
        f"{'same conns':>12}{'(bare@32)':>10}",
    ]
    for r in b.rows:
        ratio = f"{r.rps / bare[r.conns]:.0%}" if bare.get(r.conns) else "-"
        e2e_ratio = f"{r.e2e_rate / ceiling:.0%}" if r.e2e_rate is not None and ceiling else "-"
        rate = f"{r.e2e_rate:.0f}" if r.e2e_rate is not None else "-"
        out.append(
            f"{r.target:<12}{r.conns:>6}{r.rps:>9.0f}{r.p50:>9.2f}{r.p99:>9.2f}{r.errors:>5}"
            f"{rate:>10}{ms(r.e2e_p50):>9}{ms(r.e2e_p99):>9}{ratio:>12}{e2e_ratio:>10}"
        )
    out.append("")
    if hasattr(b, "drain_result"):
        n, got, rate, peak, cpu_us = b.drain_result
        out.append(
            f"backlog drain: {got}/{n} deliveries at {rate:.0f}/s (gateway CPU {cpu_us:.0f} us"
            f" per delivery, peak RSS {peak:.0f} MiB)"
        )
    rows = {(r.target, r.conns): r for r in b.rows}
    if (h := rows.get(("gw-history", 32))) and (g := rows.get(("gateway", 32))):
        out.append(
            f"intake on a store holding {b.args.history} events: {h.rps:.0f} req/s at 32"
            f" connections = {h.rps / g.rps:.0%} of the same on an empty store"
        )
    out.append("resident memory (VmRSS of the gateway's processes):")
    out += [f"  {k:<58}{v:>7.0f} MiB" for k, v in b.memory.items()]
    out.append("")
    out.append("targets (same run):")
    if b.args.workers != 1:
        out.append(f"  (the gateway ran {b.args.workers} HTTP workers; the targets are for one)")
    out += targets(b, bare, ceiling)
    out += [f"note: {n}" for n in b.notes]
    return "\n".join(out)


def targets(b: Bench, bare: dict[int, float], ceiling: float) -> list[str]:
    def check(ok: bool, text: str) -> str:
        return f"  [{'PASS' if ok else 'FAIL'}] {text}"

    rows = {(r.target, r.conns): r for r in b.rows}
    out = []
    if (g := rows.get(("gateway", 32))) and bare.get(32):
        out.append(
            check(
                g.rps >= 0.5 * bare[32] and g.p99 < 25,
                f"durable intake at 32 connections {g.rps / bare[32]:.0%} of bare Sanic"
                f" (>= 50%), p99 ack {g.p99:.1f} ms (< 25 ms)",
            )
        )
    for per, need in ((1, 0.25), (3, 0.10)):
        r = rows.get((f"e2e-{per}", 32))
        if r is not None and r.e2e_rate is not None and ceiling:
            out.append(
                check(
                    r.e2e_rate >= need * ceiling,
                    f"end to end, {per} webhook destination(s): {r.e2e_rate:.0f} events/s"
                    f" = {r.e2e_rate / ceiling:.0%} of the ceiling (>= {need:.0%})",
                )
            )
    big = [v for k, v in b.memory.items() if k.startswith(f"{b.args.backlog} pending")]
    if big:
        out.append(
            check(
                max(big) < 200,
                f"memory with {b.args.backlog} pending deliveries: {max(big):.0f} MiB (< 200 MiB)",
            )
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 s runs, 20,000-delivery drain, 200,000-delivery backlog",
    )
    p.add_argument("--duration", type=float, help="seconds per load run (10; quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per target (2; quick 1)")
    p.add_argument("--connections", default="1,32,256", help="intake runs (1,32,256)")
    p.add_argument("--e2e-connections", default="1,32", help="end-to-end runs (1,32)")
    p.add_argument("--drain", type=int, help="deliveries for the drain phase (100000)")
    p.add_argument("--backlog", type=int, help="pending deliveries for memory (1000000)")
    p.add_argument(
        "--history", type=int, help="routed events already stored for the history phase (1000000)"
    )
    p.add_argument("--drain-timeout", type=float, default=300.0, help="bound per drain (300 s)")
    p.add_argument(
        "--delivery-concurrency",
        type=int,
        default=None,
        help="delivery.concurrency in the gateway config (default: the gateway's)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log_level in the gateway config (default: the gateway's, info)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server.workers of the gateway (1; the targets are for one, bare Sanic stays at one)",
    )
    p.add_argument("--no-node-red", action="store_true", help="skip the Node-RED target")
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (all)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory and logs")
    a = p.parse_args()
    q = a.quick
    a.duration = a.duration or (3.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.drain = a.drain or (20_000 if q else 100_000)
    a.backlog = a.backlog or (200_000 if q else 1_000_000)
    a.history = a.history or (200_000 if q else 1_000_000)
    a.phases = set(a.phases.split(","))
    if a.phases - set(PHASES):
        p.error(f"--phases: unknown {', '.join(sorted(a.phases - set(PHASES)))}")
    a.connections = [int(c) for c in a.connections.split(",")]
    a.e2e_connections = [int(c) for c in a.e2e_connections.split(",")]
    if not shutil.which("wrk"):
        print("bench/run.py needs wrk on the PATH (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    print(
        f"bench/run.py: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f},"
        f" {a.duration:g}s per run, wrk 1 thread, gateway workers {a.workers}, workdir {work}",
        flush=True,
    )
    b = Bench(a, work)
    try:
        b.run()
    finally:
        b.stop_all()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(b))
    print(
        "\nThe load generator (wrk), the receiver and the server share this machine's CPUs:"
        " compare ratios within one run, not absolute numbers across machines or runs."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
