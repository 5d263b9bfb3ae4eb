"""Backlog drain: how fast the delivery engine empties a queue, and its memory meanwhile.

    .venv/bin/python bench/bench_delivery.py [--deliveries 100000] [--concurrency 8]
        [--transport aiohttp|httpx] [--payload original|envelope] [--secret]

Queues `deliveries` pending webhook deliveries in a fresh SQLite store (through the store API,
as the router would), then starts a real `DeliveryEngine` (system clock, shared client from
`make_http_client`) against bench/loopback_receiver.py in a separate process, and reports
deliveries/s until every delivery is ``delivered`` plus this process's resident memory (VmRSS)
before and at its peak during the drain. Not a test. End-to-end intake->receiver figures come
from the lead's end-to-end benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http_client import start_receiver

from gateway.clock import SystemClock
from gateway.config import load_config_text
from gateway.delivery.engine import DeliveryEngine
from gateway.destination.base import Services
from gateway.destination.http import make_http_client
from gateway.store import IncomingEvent, NewDelivery
from gateway.store.marks import Marks
from gateway.store.sqlite import SQLiteStore, new_delivery_id

RAW = (
    '{"message_uuid": "%s", "channel_type": "SMS", "callback_event": "delivered",'
    ' "status": "delivered", "status_time": "2020-10-16T18:51:13Z"}'
)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def fill(store: SQLiteStore, n: int, now: float) -> None:
    batch = 1000
    for start in range(0, n, batch):
        size = min(batch, n - start)
        uuids = [str(uuid.uuid4()) for _ in range(size)]
        items = [IncomingEvent(RAW % u, u, u, "delivered") for u in uuids]
        result = await store.ingest("revicom", items, now)
        await asyncio.gather(
            *(
                store.finish_event(
                    eid, "routed", [NewDelivery(new_delivery_id(now), eid, "all", "hook", now)], now
                )
                for eid in result.event_ids
            )
        )


async def run(args: argparse.Namespace, url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        await store.open()
        clock = SystemClock()
        t0 = time.perf_counter()
        await fill(store, args.deliveries, clock.now())
        fill_s = time.perf_counter() - t0
        secret = ""
        if args.secret:
            secret = ", secret: whsec_" + base64.b64encode(b"k" * 32).decode()
        loaded = load_config_text(
            f"delivery: {{concurrency: {args.concurrency}}}\n"
            f"destinations:\n  hook: {{type: webhook, url: '{url}', payload: {args.payload}"
            f"{secret}}}\n",
            env={},
        )
        http = make_http_client(args.transport)
        services = Services(http, clock, Marks(store, clock), loaded.secrets)
        engine = DeliveryEngine(loaded, store, services, clock, "bench")
        before = peak = rss_mib()
        t0, cpu0 = time.perf_counter(), time.process_time()
        await engine.start()
        delivered = 0
        while delivered < args.deliveries:
            await asyncio.sleep(0.5)
            peak = max(peak, rss_mib())
            delivered = (await store.counts())["deliveries"].get("delivered", 0)
        drain_s = time.perf_counter() - t0
        cpu_ms = (time.process_time() - cpu0) * 1000 / args.deliveries
        await engine.stop(5)
        await http.aclose()
        groups, ops = store.committer.groups, store.committer.operations
        await store.close()
    print(f"queued {args.deliveries} deliveries in {fill_s:.1f}s")
    print(
        f"drained {args.deliveries} in {drain_s:.1f}s: {args.deliveries / drain_s:.0f}"
        f" deliveries/s (concurrency {args.concurrency}, transport {args.transport},"
        f" payload {args.payload}{', signed' if args.secret else ''})"
    )
    print(f"CPU: {cpu_ms:.2f} ms per delivery in the gateway process (all threads)")
    print(f"resident memory: {before:.0f} MiB before the drain, peak {peak:.0f} MiB during it")
    print(f"store: {groups} commit groups for {ops} operations (whole run)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deliveries", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--transport", default="aiohttp", choices=["aiohttp", "httpx"])
    ap.add_argument("--payload", default="original", choices=["original", "envelope"])
    ap.add_argument("--secret", action="store_true", help="sign every request")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    proc, url = start_receiver()
    try:
        asyncio.run(run(args, url))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
