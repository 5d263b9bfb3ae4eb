"""Intake throughput with one and with two gateway instances, on Redis and on SQLite.

    .venv/bin/python bench/bench_redis.py [--duration 10] [--connections 32]
        [--redis-url redis://127.0.0.1:6379/0] [--fsync always,none]

Targets, one after the other on 127.0.0.1 (`python -m gateway run`, one source behind Basic
auth, one route to a `file` destination so routing and delivery run during the load):

- ``sqlite x1``: the SQLite store (WAL, synchronous=FULL, group commit);
- ``sqlite x2``: two gateway processes on the same SQLite file;
- ``redis-<fsync> x1`` / ``x2``: one / two gateway processes on one Redis. ``--fsync always``
  and ``everysec`` start a private ``redis-server`` (AOF with that ``appendfsync``, in the
  temporary directory, stopped by PID at the end) so the numbers include Redis's fsync;
  ``none`` uses ``--redis-url`` as it is configured (here: no persistence).

Load: wrk (bench/intake_post.lua), the same connection count in total for one and for two
instances (split evenly between them, one wrk per instance running at the same time). Prints
requests/s (sum over instances) and p50/p99 ack latency (the worse instance). Keys go under a
fresh prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_intake import PASSWORD, PATH, USER, Server, free_port, run_wrk  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, workers: 1}}
store: "{store}"
sources:
  revicom:
    path: {path}
    format: revicom
    auth:
      basic: {{username: {user}, password: "{password}"}}
destinations:
  archive: {{type: file, path: var/events.jsonl}}
routes:
  - name: archive
    to: [archive]
"""


def start_redis(work: Path, fsync: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data = work / f"redis-{fsync}"
    data.mkdir()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            fsync,
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def delete_prefix(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])


def run(
    name: str, store: str, instances: int, work: Path, conns: int, duration: float, warmup: float
) -> tuple[float, float, float, int]:
    servers = []
    try:
        for n in range(instances):
            d = work / f"{name}-{instances}-{n}"
            d.mkdir()
            port = free_port()
            (d / "gateway.yaml").write_text(
                CONFIG.format(port=port, store=store, path=PATH, user=USER, password=PASSWORD)
            )
            s = Server(
                f"{name}-{n}",
                [sys.executable, "-m", "gateway", "run", "-c", "gateway.yaml"],
                d,
                port,
            )
            servers.append(s)
            s.start()
        share = max(1, conns // instances)
        tag = f"{name}-{instances}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

        def load(i: int, seconds: float, phase: str) -> tuple[int, float, float, float, int]:
            return run_wrk(servers[i].url(PATH), share, seconds, f"{tag}-{phase}-{i}")

        with ThreadPoolExecutor(instances) as pool:
            if warmup > 0:
                list(pool.map(lambda i: load(i, warmup, "w"), range(instances)))
            results = list(pool.map(lambda i: load(i, duration, "m"), range(instances)))
    finally:
        for s in servers:
            s.stop()
    rps = sum(r[0] / r[1] for r in results)
    return rps, max(r[2] for r in results), max(r[3] for r in results), sum(r[4] for r in results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32, help="total, split over instances")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--fsync",
        default="always,none",
        help="Redis persistence to measure: always, everysec, none (comma-separated)",
    )
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench_redis needs wrk on the PATH (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    print(
        f"bench_redis: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f},"
        f" {args.duration:g}s per run, {args.connections} connections in total,"
        f" hiredis {'on' if HIREDIS_AVAILABLE else 'off'}",
        flush=True,
    )
    rows = []
    redis_procs: list[subprocess.Popen[bytes]] = []
    try:
        targets = [("sqlite", "sqlite:///" + str(work / "gateway.db"), None)]
        for fsync in args.fsync.split(","):
            if fsync == "none":
                targets.append(("redis-asis", args.redis_url, args.redis_url))
            else:
                proc, url = start_redis(work, fsync)
                redis_procs.append(proc)
                targets.append((f"redis-{fsync}", url, url))
        for name, url, redis_url in targets:
            for instances in (1, 2):
                store = url
                prefix = f"bench-{uuid.uuid4().hex[:8]}:"
                if redis_url:
                    store = f"{url}?prefix={prefix}"
                elif instances == 2:
                    store = "sqlite:///" + str(work / "gateway2.db")
                try:
                    rps, p50, p99, errors = run(
                        name, store, instances, work, args.connections, args.duration, args.warmup
                    )
                finally:
                    if redis_url:
                        delete_prefix(redis_url, prefix)
                rows.append((name, instances, rps, p50, p99, errors))
                print(
                    f"  {name:<15} x{instances}  {rps:>8.0f} req/s  p50 {p50:7.2f} ms"
                    f"  p99 {p99:7.2f} ms  errors {errors}",
                    flush=True,
                )
    finally:
        for proc in redis_procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    sqlite = {n: rps for name, n, rps, *_ in rows if name == "sqlite"}
    print(
        f"\n{'store':<16}{'inst':>5}{'req/s':>10}{'vs sqlite':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}"
    )
    for name, n, rps, p50, p99, errors in rows:
        ratio = f"{rps / sqlite[n]:.2f}" if sqlite.get(n) else "-"
        print(f"{name:<16}{n:>5}{rps:>10.0f}{ratio:>10}{p50:>9.2f}{p99:>9.2f}{errors:>8}")
    print(
        "\nvs sqlite: requests/s over SQLite's with as many instances, in this run."
        "\nredis-asis: the --redis-url server as configured (check its persistence);"
        " load generator and servers share this machine's CPUs."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
