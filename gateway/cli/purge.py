"""`callback-gateway purge -c FILE [--json]`: one retention pass now.

The same pass the gateway's schedule runs (`gateway.ops.housekeeping.purge_once`), against the
configured store, opened directly: it works whether or not the gateway is running, and is safe
while it does (every step is a short transaction of its own).
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.cli.admin import with_store
from gateway.config import load_config
from gateway.ops.housekeeping import purge_once
from gateway.store import Store


def purge(args: argparse.Namespace) -> int:
    retention = load_config(args.config).config.retention
    now = time.time()

    async def run(store: Store) -> dict[str, int]:
        return await purge_once(store, retention, now)

    removed = with_store(args, run)
    if args.json:
        print(json.dumps(removed))
        return 0
    width = max(len(kind) for kind in removed)
    for kind, n in removed.items():
        print(f"{kind:<{width}}  {n}")
    return 0
