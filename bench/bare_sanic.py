"""The framework's ceiling: a bare Sanic app that parses the JSON body and answers 200.

    python bench/bare_sanic.py --port 8081

One process (``single_process``), no access log, no auth check, no storage: whatever the
gateway's intake does beyond this is the cost of auth, validation, dedupe and durable commits.
"""

from __future__ import annotations

import argparse
import json

from sanic import Request, Sanic, response
from sanic.response import HTTPResponse

app = Sanic("bare_sanic")
app.config.ACCESS_LOG = False
app.config.MOTD = False
app.config.KEEP_ALIVE_TIMEOUT = 75


@app.post("/callbacks/revicom")
async def callbacks(request: Request) -> HTTPResponse:
    items = json.loads(request.body)
    if isinstance(items, dict):
        items = [items]
    return response.json({"accepted": len(items), "duplicates": 0, "quarantined": 0})


@app.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    return response.json({"status": "ready"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    args = p.parse_args()
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
