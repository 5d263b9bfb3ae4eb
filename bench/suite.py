"""The phases of bench/run.py: one target at a time, pinned, all loaded by the same wrk script.

Pinning (the default; ``--no-pin`` turns it off): the server under test runs under
``taskset -c 0`` (``0-1`` in the both-cores phase), wrk (one thread) and the nginx receiver
under ``taskset -c 1``, and so does this script. Every server, wrk and nginx started here is
stopped by its PID; every load run is bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import node_red
from bench_intake import PASSWORD, PATH, USER, Server, free_port, source_config
from fill_backlog import fill, fill_history
from nginx_receiver import NginxReceiver
from stores import StoreUnderTest

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "intake_post.lua"
#: Seconds a target may take to start (a loaded 2-core machine needs far more than an idle one).
START = 120.0


@dataclass
class Row:
    """One measured load run."""

    round: int
    target: str
    store: str
    conns: int
    rps: float = 0.0  # acknowledged requests per second
    p50: float = 0.0  # ack latency, ms
    p99: float = 0.0
    errors: int = 0
    delivered: float | None = None  # events per second at the receiver (count / span)
    cpu_us: float = 0.0  # server CPU (all processes and threads) per acknowledged request
    events: int = 1  # events per request
    note: str = ""


@dataclass
class Wrk:
    requests: int
    seconds: float
    p50: float
    p99: float
    errors: int

    @property
    def ok(self) -> int:
        return self.requests - self.errors


def wrk_argv(url: str, conns: int, seconds: float, prefix: str, events: int) -> list[str]:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [
        "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(LUA), url, "--", prefix, token, str(events),
    ]  # fmt: skip


def parse_wrk(stdout: str) -> Wrk:
    line = next(x for x in stdout.splitlines() if x.startswith("WRK_JSON "))
    d = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(
        d[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return Wrk(d["requests"], d["duration_us"] / 1e6, d["p50_us"] / 1e3, d["p99_us"] / 1e3, errors)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        pin = not args.no_pin
        self.server_pin = ["taskset", "-c", args.server_cpus] if pin else []
        self.both_pin = ["taskset", "-c", f"{args.server_cpus},{args.client_cpus}"] if pin else []
        self.client_pin = ["taskset", "-c", args.client_cpus] if pin else []
        self.rows: list[Row] = []
        self.memory: dict[str, float] = {}
        self.notes: list[str] = []
        self.servers: list[Server] = []
        self.receiver = NginxReceiver(work / "nginx", self.client_pin)
        self.round = 0
        self._runs = 0
        #: While a phase runs against ``--baseline``: its command and the suffix of its targets.
        self.python: list[str] | None = None
        self.suffix = ""
        self.drain_result: tuple[int, int, float, float, float] | None = None

    # -- processes ----------------------------------------------------------------------------

    def server(self, name: str, argv: list[str], port: int, ready: str = "/readyz") -> Server:
        cwd = self.work / f"{name}-{self._next()}"
        cwd.mkdir(parents=True, exist_ok=True)
        s = Server(name, argv, cwd, port, ready)
        self.servers.append(s)
        return s

    def _next(self) -> int:
        self._runs += 1
        return self._runs

    def gateway(
        self,
        name: str,
        store: StoreUnderTest,
        destinations: int = 0,
        pin: list[str] | None = None,
        extra: str = "",
        db: Path | None = None,
        url: str | None = None,
    ) -> Server:
        port = free_port()
        python = self.python or os.environ.get("BENCH_GATEWAY_PYTHON", sys.executable).split()
        name += self.suffix
        argv = [*(self.server_pin if pin is None else pin), *python, "-m", "gateway", "run"]
        s = self.server(name, [*argv, "-c", "gateway.yaml"], port)
        url = url or store.fresh_url()
        text = source_config(port).replace("store: sqlite:///var/gateway.db", f"store: {url}")
        if self.args.log_level:
            text += f"log_level: {self.args.log_level}\n"
        if destinations:
            hooks = [f"hook{i}" for i in range(1, destinations + 1)]
            text += "destinations:\n" + "".join(
                f"  {h}: {{type: webhook, url: '{self.receiver.url}/{h}'}}\n" for h in hooks
            )
            text += f"routes:\n  - name: bench\n    to: [{', '.join(hooks)}]\n"
        (s.cwd / "gateway.yaml").write_text(text + extra)
        if db is not None:
            (s.cwd / "var").mkdir(exist_ok=True)
            db.rename(s.cwd / "var" / "gateway.db")
        return s

    def wrk(self, url: str, conns: int, seconds: float, events: int = 1) -> Wrk:
        prefix = f"r{os.getpid()}-{self._next()}-{uuid.uuid4().hex[:8]}"
        argv = [*self.client_pin, *wrk_argv(url, conns, seconds, prefix, events)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
        return parse_wrk(out.stdout)

    def wrk_many(self, urls: list[str], conns: int, seconds: float) -> list[Wrk]:
        """One wrk per URL at the same time, `conns` split between them."""
        procs = []
        for url in urls:
            prefix = f"r{os.getpid()}-{self._next()}-{uuid.uuid4().hex[:8]}"
            argv = wrk_argv(url, max(1, conns // len(urls)), seconds, prefix, 1)
            procs.append(
                subprocess.Popen([*self.client_pin, *argv], stdout=subprocess.PIPE, text=True)
            )
        outs = []
        for p in procs:
            stdout, _ = p.communicate(timeout=seconds + 60)
            outs.append(parse_wrk(stdout))
        return outs

    # -- measurements -------------------------------------------------------------------------

    def add(self, row: Row) -> None:
        self.rows.append(row)
        rate = f"  delivered {row.delivered:7.0f} ev/s" if row.delivered is not None else ""
        per = f" x{row.events} events" if row.events != 1 else ""
        print(
            f"  {row.target:<14} {row.store:<7} c={row.conns:<3}{row.rps:>8.0f} req/s{per}"
            f"  ack p50 {row.p50:6.2f} ms p99 {row.p99:7.2f} ms  err {row.errors}"
            f"  cpu {row.cpu_us:5.0f} us/req{rate}  {row.note}",
            flush=True,
        )

    def load(self, s: Server, store: str, conns: int, events: int = 1) -> Row:
        """Warm up, then one measured run (no receiver involved)."""
        url = s.url(PATH)
        if self.args.warmup:
            self.wrk(url, conns, self.args.warmup, events)
        cpu = s.cpu_seconds()
        w = self.wrk(url, conns, self.args.duration, events)
        cpu_us = (s.cpu_seconds() - cpu) / max(1, w.ok) * 1e6
        return Row(self.round, s.name, store, conns, w.ok / w.seconds, w.p50, w.p99, w.errors,
                   cpu_us=cpu_us, events=events)  # fmt: skip

    def forwarded(self, s: Server, store: str, conns: int, per_event: int) -> Row:
        """Warm up, let the warm-up's deliveries arrive, then one measured run: acks from wrk,
        delivered events/s from nginx's log (count / span of arrivals)."""
        url, a = s.url(PATH), self.args
        if a.warmup:
            # Every warm-up delivery must have arrived before the measured run starts (a
            # delivery process may still be starting: it is not part of /readyz).
            self.receiver.reset()
            w = self.wrk(url, conns, a.warmup)
            self.receiver.wait_quiet(w.ok * per_event, a.drain_timeout, patience=60.0)
        self.receiver.reset()
        cpu = s.cpu_seconds()
        w = self.wrk(url, conns, a.duration)
        st = self.receiver.wait_quiet(w.ok * per_event, a.drain_timeout)
        cpu_us = (s.cpu_seconds() - cpu) / max(1, w.ok) * 1e6
        note = f"{st.count} arrivals for {w.ok} acks"
        if st.count < w.ok * per_event:
            note += " (MISSING)"
        return Row(self.round, s.name, store, conns, w.ok / w.seconds, w.p50, w.p99, w.errors,
                   st.rate / per_event, cpu_us, note=note)  # fmt: skip

    # -- phases -------------------------------------------------------------------------------

    def bare(self) -> None:
        port = free_port()
        argv = [*self.server_pin, sys.executable, str(BENCH / "bare_sanic.py"), "--port", str(port)]
        s = self.server("bare-sanic", argv, port).start(timeout=START)
        for c in self.args.connections:
            self.add(self.load(s, "-", c))
        s.stop()

    def forwarder(self) -> None:
        port = free_port()
        to = f"{self.receiver.url}/fwd"
        argv = [*self.server_pin, sys.executable, str(BENCH / "forwarder.py")]
        argv += ["--port", str(port), "--to", to]
        s = self.server("aiohttp-fwd", argv, port).start(timeout=START)
        self.add(self.forwarded(s, "-", self.args.e2e_conns, 1))
        s.stop()

    def node_red(self) -> None:
        if self.args.no_node_red:
            self.note("node-red: skipped (--no-node-red)")
            return
        reason = node_red.ensure_installed()
        if reason is not None:
            print(f"  node-red skipped: {reason}", flush=True)
            self.note(f"node-red: skipped ({reason})")
            return
        port = free_port()
        workdir = self.work / f"node-red-{self._next()}"
        argv = node_red.prepare(workdir, port, PATH, self.receiver.url + "/nr")
        s = self.server("node-red", [*self.server_pin, *argv], port, ready="/").start(timeout=START)
        self.add(self.forwarded(s, "-", self.args.e2e_conns, 1))
        self.note(f"node-red {node_red.version()}: no persistence, no retry, no auth")
        s.stop()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def intake(self, store: StoreUnderTest) -> None:
        s = self.gateway("intake", store).start(timeout=START)
        time.sleep(0.5)
        idle = s.rss_mib()
        for c in self.args.connections:
            self.add(self.load(s, store.label, c))
        if not self.suffix:  # the code under test, not the baseline
            self.memory["gateway idle (started, empty store)"] = idle
            self.memory["gateway after intake load"] = s.rss_mib()
        s.stop()

    def e2e(self, store: StoreUnderTest, per_event: int, both: bool = False) -> None:
        name = f"e2e-{per_event}" + ("-2cores" if both else "")
        extra = self.args.both_cores_config if both else ""
        pin = self.both_pin if both else None
        s = self.gateway(name, store, per_event, pin=pin, extra=extra).start(timeout=START)
        self.add(self.forwarded(s, store.label, self.args.e2e_conns, per_event))
        s.stop()

    def batch(self, store: StoreUnderTest) -> None:
        s = self.gateway("batch-100", store).start(timeout=START)
        row = self.load(s, store.label, self.args.e2e_conns, events=self.args.batch_events)
        row.note = f"{row.rps * row.events:.0f} events/s"
        self.add(row)
        s.stop()

    def two_instances(self, store: StoreUnderTest) -> None:
        """Two gateways on one database, one webhook each way, loaded at the same time."""
        url = store.shared_url(self.work / f"shared-{self._next()}")
        gws = [
            self.gateway("two-inst", store, 1, pin=self.both_pin, url=url).start(timeout=START)
            for _ in range(2)
        ]
        a = self.args
        self.receiver.reset()
        cpu = sum(g.cpu_seconds() for g in gws)
        ws = self.wrk_many([g.url(PATH) for g in gws], a.e2e_conns, a.duration)
        ok = sum(w.ok for w in ws)
        st = self.receiver.wait_quiet(ok, a.drain_timeout)
        cpu_us = (sum(g.cpu_seconds() for g in gws) - cpu) / max(1, ok) * 1e6
        secs = max(w.seconds for w in ws)
        note = f"{st.count} arrivals for {ok} acks" + (" (MISSING)" if st.count < ok else "")
        self.add(Row(self.round, "two-inst", store.label, a.e2e_conns, ok / secs,
                     max(w.p50 for w in ws), max(w.p99 for w in ws), sum(w.errors for w in ws),
                     st.rate, cpu_us, note=note))  # fmt: skip
        for g in gws:
            g.stop()

    def history(self, store: StoreUnderTest) -> None:
        db = self.work / "history.db"
        secs = fill_history(db, self.args.history)
        print(f"  stored {self.args.history} routed events in {secs:.1f}s", flush=True)
        s = self.gateway("gw-history", store, db=db).start(timeout=START)
        self.add(self.load(s, store.label, 32))
        s.stop()

    def drain(self, store: StoreUnderTest) -> None:
        n = self.args.drain
        db = self.work / "drain.db"
        secs = fill(db, n, ["hook1"], "bench")
        print(f"  queued {n} deliveries in {secs:.1f}s", flush=True)
        self.receiver.reset()
        s = self.gateway("drain", store, 1, db=db).start(timeout=START)
        cpu, peak = s.cpu_seconds(), 0.0
        deadline = time.monotonic() + self.args.drain_timeout
        while self.receiver.stats().count < n and time.monotonic() < deadline:
            peak = max(peak, s.rss_mib())
            time.sleep(0.5)
        st = self.receiver.stats()
        cpu_us = (s.cpu_seconds() - cpu) / max(1, st.count) * 1e6
        s.stop()
        self.drain_result = (n, st.count, st.rate, peak, cpu_us)
        print(f"  drained {st.count}/{n} at {st.rate:.0f}/s, peak RSS {peak:.0f} MiB,"
              f" cpu {cpu_us:.0f} us/delivery", flush=True)  # fmt: skip

    def backlog(self, store: StoreUnderTest) -> None:
        n = self.args.backlog
        db = self.work / "backlog.db"
        secs = fill(db, n, ["hook1"], "bench")
        print(f"  queued {n} deliveries in {secs:.1f}s", flush=True)
        s = self.gateway("backlog", store, 1, db=db).start(timeout=START)
        self.memory[f"{n} pending deliveries: after start"] = s.rss_mib()
        peak, deadline = 0.0, time.monotonic() + self.args.duration
        while time.monotonic() < deadline:
            peak = max(peak, s.rss_mib())
            time.sleep(0.2)
        s.stop()
        self.memory[f"{n} pending deliveries: peak while draining {self.args.duration:g}s"] = peak

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()
        self.receiver.stop()
