"""Sanic + aiohttp forwarding each callback to the receiver, storing nothing: the physical-ish
limit of one forward per request in Python.

    python bench/forwarder.py --port 8082 --to http://127.0.0.1:PORT/fwd

Parses the JSON body like bench/bare_sanic.py, POSTs the body unchanged to ``--to`` through one
aiohttp session (keep-alive pool), waits for the receiver's answer, then answers 200. One process
(``single_process``), no access log, no auth check, no storage, no retry: whatever the gateway's
end to end does beyond this is durability, dedupe, routing, retries and httpx's API.
"""

from __future__ import annotations

import argparse
import json

import aiohttp
from sanic import Request, Sanic, response
from sanic.response import HTTPResponse

app = Sanic("bench_forwarder")
app.config.ACCESS_LOG = False
app.config.MOTD = False
app.config.KEEP_ALIVE_TIMEOUT = 75
TARGET = {"url": ""}
HEADERS = {"Content-Type": "application/json"}


@app.before_server_start
async def open_session(app: Sanic) -> None:
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=75)
    app.ctx.session = aiohttp.ClientSession(connector=connector)


@app.after_server_stop
async def close_session(app: Sanic) -> None:
    await app.ctx.session.close()


@app.post("/callbacks/revicom")
async def callbacks(request: Request) -> HTTPResponse:
    items = json.loads(request.body)
    if isinstance(items, dict):
        items = [items]
    async with request.app.ctx.session.post(TARGET["url"], data=request.body, headers=HEADERS) as r:
        await r.read()
        if r.status >= 300:
            return response.json({"error": "forward failed"}, status=502)
    return response.json({"accepted": len(items), "duplicates": 0, "quarantined": 0})


@app.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    return response.json({"status": "ready"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8082)
    p.add_argument("--to", required=True, help="the receiver URL each body is posted to")
    args = p.parse_args()
    TARGET["url"] = args.to
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
