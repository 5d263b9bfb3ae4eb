"""Side-by-side outbound HTTP clients: which transport goes under our httpx API.

    .venv/bin/python bench/bench_http_client.py [--requests 20000] [--concurrency 32]

Sends POSTs of a ~200-byte JSON body from `concurrency` tasks to bench/loopback_receiver.py (a
separate process) and prints requests/s for: stock httpx (default pool), stock httpx with a
`concurrency`-connection pool, httpx over httpx-aiohttp's transport (what make_http_client
returns), and aiohttp used directly (the ceiling). Same event loop (uvloop, as under Sanic),
same receiver, same run. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.destination.http import make_http_client

BODY = (
    b'[{"message_uuid": "063474ec-a34f-4558-90c5-984395000004", "channel_type": "SMS",'
    b' "callback_event": "delivered", "status": "delivered",'
    b' "status_time": "2020-10-16T18:51:13Z"}]'
)
HEADERS = {"content-type": "application/json", "webhook-id": "msg_01BENCH"}


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("loopback_receiver.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = proc.stdout.readline().split()[1]
    return proc, f"http://127.0.0.1:{port}/hook"


async def drive(
    send: Callable[[], Awaitable[int]], n: int, concurrency: int
) -> tuple[float, float]:
    """(requests/s, client CPU ms per request)."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await send()
            assert status == 200, status

    for _ in range(min(200, n)):  # warm up connections
        await send()
    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0), (time.process_time() - cpu0) * 1000 / n


async def run(url: str, n: int, concurrency: int) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}

    async def with_httpx(name: str, client: httpx.AsyncClient) -> None:
        async def send() -> int:
            r = await client.post(url, content=BODY, headers=HEADERS, timeout=10.0)
            return r.status_code

        async with client:
            results[name] = await drive(send, n, concurrency)

    await with_httpx("httpx (stock, default pool)", make_http_client("httpx"))
    await with_httpx(
        f"httpx (stock, {concurrency}-connection pool)",
        httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        ),
    )
    await with_httpx("httpx + httpx-aiohttp transport", make_http_client("aiohttp"))
    await with_httpx("httpx + our h1 transport (make_http_client)", make_http_client("h1"))

    async with aiohttp.ClientSession() as session:

        async def send() -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as r:
                await r.read()
                return r.status

        results["aiohttp directly"] = await drive(send, n, concurrency)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds per client")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    proc, url = start_receiver()
    try:
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, (rate, cpu) in asyncio.run(run(url, args.requests, args.concurrency)).items():
                old = best.get(name, (0.0, math.inf))
                best[name] = (max(old[0], rate), min(old[1], cpu))
    finally:
        proc.terminate()
        proc.wait()
    print(f"{args.requests} POSTs, {args.concurrency} concurrent, best of {args.rounds}:")
    for name, (rate, cpu) in best.items():
        print(f"  {name:52s} {rate:7.0f} req/s  {cpu:5.2f} ms CPU/request")


if __name__ == "__main__":
    main()
