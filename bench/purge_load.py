"""Intake's ack latency while a retention pass removes a million events, and /metrics on them.

    .venv/bin/python bench/purge_load.py [--events 1000000] [--connections 32] [--round 10]

One run on 127.0.0.1:

1. fill: `--events` routed (``unmatched``) events with their dedupe keys in a fresh SQLite file
   (bench/fill_backlog.py ``--history``), received a moment ago;
2. start ``python -m gateway run`` on that file (one revicom source with Basic auth, no routes,
   default retention: its own first pass removes nothing);
3. scrape: ``GET /metrics`` `--scrapes` times on the full store, wall time per scrape;
4. baseline: wrk (bench/intake_post.lua, one thread) at `--connections` for `--round` seconds;
5. purge under load: ``python -m gateway purge`` with ``retention.events: 1s`` on the same file
   (the code the schedule runs), and wrk rounds of `--round` seconds until the pass has ended.
   Prints the pass's duration and counts, and p50/p99/max ack latency of each round.

Only loopback traffic; every phase is bounded; the servers it starts are stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_intake import PATH, Server, free_port, run_wrk, source_config  # noqa: E402
from fill_backlog import fill_history  # noqa: E402


def scrape_times(server: Server, n: int) -> list[float]:
    """Milliseconds per ``GET /metrics``; the first reading is the uncached one."""
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            answer = client.get(server.url("/metrics"))
            out.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.status_code
            time.sleep(2.5)  # past the gauges' cache: every scrape reads the store
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--round", type=float, default=10.0, help="seconds per wrk round")
    p.add_argument("--scrapes", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install -y wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-purge-"))
    db = work / "var" / "gateway.db"
    port = free_port()
    (work / "gateway.yaml").write_text(source_config(port))
    (work / "purge.yaml").write_text(
        source_config(port) + "retention: {events: 1s, delivered: 1s, dead: 1s, quarantined: 1s}\n"
    )
    print(f"purge_load: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, in {work}")
    seconds = fill_history(db, args.events)
    size = sum(f.stat().st_size for f in db.parent.glob("gateway.db*"))
    print(
        f"fill: {args.events:,} events with dedupe keys in {seconds:.0f}s, {size / 2**20:.0f} MiB"
    )
    gw = Server(
        "gateway", [sys.executable, "-m", "gateway", "run", "-c", "gateway.yaml"], work, port
    )
    purge: subprocess.Popen[str] | None = None
    try:
        gw.start(timeout=120)
        times = scrape_times(gw, args.scrapes)
        print("scrape /metrics: " + ", ".join(f"{t:.1f}" for t in times) + " ms")
        url = gw.url(PATH)
        n, secs, p50, p99, errors = run_wrk(url, args.connections, args.round, "base")
        print(
            f"baseline: {n / secs:,.0f} req/s  p50 {p50:.1f} ms  p99 {p99:.1f} ms  errors {errors}"
        )
        started = time.monotonic()
        purge = subprocess.Popen(
            [sys.executable, "-m", "gateway", "purge", "-c", "purge.yaml", "--json"],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        rounds = 0
        while purge.poll() is None and rounds < 60:
            rounds += 1
            n, secs, p50, p99, errors = run_wrk(url, args.connections, args.round, f"r{rounds}")
            print(
                f"round {rounds} (purge running: {purge.poll() is None}): {n / secs:,.0f} req/s"
                f"  p50 {p50:.1f} ms  p99 {p99:.1f} ms  errors {errors}",
                flush=True,
            )
        out, err = purge.communicate(timeout=3600)
        elapsed = time.monotonic() - started
        if purge.returncode != 0:
            raise SystemExit(f"purge failed: {err}")
        print(f"purge: {json.loads(out)} in {elapsed:.0f}s (exit {purge.returncode})")
        size = sum(f.stat().st_size for f in db.parent.glob("gateway.db*"))
        print(f"store files after the pass: {size / 2**20:.0f} MiB")
    finally:
        if purge is not None and purge.poll() is None:
            purge.terminate()  # by PID: the one this script started
            purge.wait(30)
        gw.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
