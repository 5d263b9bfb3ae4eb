"""Bytes per callback in each store: the figures of docs/operations.md ("How much space").

    .venv/bin/python bench/store_bytes.py [--n 20000] [--redis redis://127.0.0.1:6379/0]

Stores `--n` copies of the provider's ``delivered`` sample (each a new message) through the
store API, twice: routed to nothing (an event and its dedupe key), then routed to one
destination, delivered, with an ``ordering`` mark (the common case). SQLite: the file's size
after ``VACUUM``, per table with its indexes (``dbstat``). Redis: the growth of ``used_memory``
under a fresh key prefix, deleted afterwards. Nothing is sent over the network but to the local
Redis; temporary files are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gateway_plugins.revicom import RevicomFormat  # noqa: E402

from gateway.ids import new_id  # noqa: E402
from gateway.store import (  # noqa: E402
    AttemptRecord,
    FinishedEvent,
    IncomingEvent,
    NewDelivery,
    Store,
)
from gateway.store.redis import RedisStore  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402

SAMPLE = json.loads((ROOT / "gateway" / "samples" / "delivered.json").read_text())[0]
T = 1_700_000_000.0
TABLES = ("events", "dedupe", "deliveries", "attempts", "marks")


def items(start: int, n: int) -> list[IncomingEvent]:
    fmt = RevicomFormat()
    out = []
    for i in range(start, start + n):
        element = dict(SAMPLE, message_uuid=f"{SAMPLE['message_uuid'][:-8]}{i:08d}")
        raw = json.dumps(element, separators=(",", ":"))
        key = fmt.dedupe_key(element, raw, {}, 0)
        out.append(IncomingEvent(raw, key, element["message_uuid"], "delivered"))
    return out


async def fill(store: Store, n: int, deliver: bool) -> None:
    for start in range(0, n, 500):
        await store.ingest("revicom", items(start, min(500, n - start)), T)
        claimed = await store.claim_events("r", 1000, 30, T)
        await store.finish_events(
            [
                FinishedEvent(
                    e.id,
                    "routed" if deliver else "unmatched",
                    [NewDelivery(new_id("msg", T), e.id, "all", "crm", T)] if deliver else [],
                    T,
                )
                for e in claimed
            ]
        )
        if not deliver:
            continue
        label = json.dumps({"event_id": "evt_x", "label": "delivered at 2020-10-16T18:51:13Z"})
        await asyncio.gather(
            *(
                store.set_mark(
                    f"ordering:all:{e.message_uuid}:status",
                    label,
                    T,
                    rank="2|2020-10-16T18:51:13.000000Z",
                )
                for e in claimed
            )
        )
        work = await store.claim_deliveries("w", "crm", 1000, 30, T)
        await asyncio.gather(
            *(
                store.finish_attempt(
                    d.id, AttemptRecord(T, T + 0.05, "delivered", 200), "delivered", None, True, T
                )
                for d in work
            )
        )


async def sqlite_bytes(n: int, deliver: bool) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="cg-bytes-"))
    try:
        store = SQLiteStore(work / "gw.db")
        await store.open()
        await fill(store, n, deliver)
        await store.close()
        conn = sqlite3.connect(work / "gw.db")
        conn.execute("VACUUM")
        owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
        sizes = dict.fromkeys(TABLES, 0.0)
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            table = owner.get(name, name)
            if table in sizes:
                sizes[table] += size / n
        sizes["file"] = (work / "gw.db").stat().st_size / n
        conn.close()
        return sizes
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def redis_bytes(url: str, n: int, deliver: bool) -> float:
    import redis.asyncio as aioredis

    prefix = f"cg-bytes:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(url)
    store = RedisStore(f"{url}?prefix={prefix}")
    await store.open()
    try:
        before = (await client.info("memory"))["used_memory"]
        await fill(store, n, deliver)
        return float((await client.info("memory"))["used_memory"] - before) / n
    finally:
        await store.close()
        async for key in client.scan_iter(match=prefix + "*", count=1000):
            await client.delete(key)
        await client.aclose()


async def main(n: int, url: str) -> None:
    print(f"{n:,} callbacks of {len(json.dumps(SAMPLE, separators=(',', ':')))} bytes each")
    for deliver, what in (
        (False, "event + dedupe key"),
        (True, "event + dedupe key + delivered delivery + attempt + mark"),
    ):
        sizes = await sqlite_bytes(n, deliver)
        tables = ", ".join(f"{t} {sizes[t]:.0f}" for t in TABLES)
        print(f"sqlite, {what}: {sizes['file']:.0f} B/callback ({tables})")
        print(f"redis,  {what}: {await redis_bytes(url, n, deliver):.0f} B/callback")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = p.parse_args()
    asyncio.run(main(args.n, args.redis))
