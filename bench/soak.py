"""Soak: a real gateway under fixed-rate traffic with short retention; does the store plateau?

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 20] [--every 10]

Starts ``python -m gateway run`` (SQLite store; one revicom source; one webhook destination on
bench/loopback_receiver.py) with ``retention: {events: 30s, delivered: 30s, dead: 30s,
quarantined: 30s, interval: 5s}`` and posts `--rate` callbacks a second (one per request, each
a new message; every 20th invalid, so quarantine is exercised) for `--minutes`, in real time.
Every `--every` seconds it prints the store's file sizes (database, WAL) and its row counts,
read through a read-only connection. At the end: the mean of the database file's size over the
last third of the run and the largest deviation from it (the plateau criterion: within 10%).

Dedupe keys are kept at least 25 hours (`retention.dedupe` cannot be shorter), and plugin marks
(the ordering filter's) as long, so those tables grow during any run shorter than a day: a real
deployment reaches its steady state after 25 hours. ``--dedupe 30s`` compresses that too: the
gateway processes this script starts (and only they) get a ``sitecustomize`` module that lowers
the 25-hour floor (`gateway.config.models.MIN_DEDUPE_RETENTION`), and the configuration sets
``dedupe`` to that value, so a 10-minute run shows the steady state of every table.

Only loopback traffic; bounded in time; the servers it starts are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_intake import PASSWORD, PATH, USER, Server, free_port, source_config  # noqa: E402

IN_FLIGHT = 32
TABLES = ("events", "deliveries", "attempts", "dedupe", "marks")
RETENTION = "{events: 30s, delivered: 30s, dead: 30s, quarantined: 30s, interval: 5s}"


def config(port: int, hook_port: int, dedupe: str | None) -> str:
    retention = RETENTION if dedupe is None else RETENTION[:-1] + f", dedupe: {dedupe}}}"
    return (
        source_config(port)
        + f"""\
retention: {retention}
destinations:
  hook: {{type: webhook, url: "http://127.0.0.1:{hook_port}/hook"}}
routes:
  - name: all
    to: [hook]
"""
    )


def sample(db: Path) -> dict[str, int]:
    """File sizes and row counts, read without taking any write lock."""
    out = {"db_bytes": db.stat().st_size if db.exists() else 0}
    wal = db.with_name(db.name + "-wal")
    out["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        for table in TABLES:
            out[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        out["free_pages"] = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return out


async def post_at_rate(url: str, rate: float, seconds: float, counts: dict[str, int]) -> None:
    """One request every 1/rate seconds (a slow answer does not delay the next), at most
    `IN_FLIGHT` at once (httpx's pool turns slow, quadratic in its queue, with thousands of
    requests waiting). A slot that cannot be sent on time is skipped and counted, never made up
    in a burst, so the arrival rate stays at most `rate`."""
    import httpx

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    pending: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(timeout=10.0, headers=headers, limits=limits) as client:

        async def one(i: int) -> None:
            element = {
                "message_uuid": f"soak-{i}",
                "channel_type": "SMS",
                "callback_event": "delivered",
                "status": "delivered",
                "status_time": "2020-10-16T18:51:13Z",
            }
            if i % 20 == 19:
                del element["status_time"]  # invalid: quarantined
                element["status"] = 42  # type: ignore[assignment]
            try:
                answer = await client.post(url, content=json.dumps([element]))
                counts[str(answer.status_code)] = counts.get(str(answer.status_code), 0) + 1
            except httpx.HTTPError as e:
                counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
            finally:
                slots.release()

        start = time.monotonic()
        i = 0
        while (now := time.monotonic() - start) < seconds:
            due = i / rate
            if due > now:
                await asyncio.sleep(due - now)
            if now - due > 1.0 or slots.locked():
                # Behind (the machine stalled us) or IN_FLIGHT answers outstanding: the slot is
                # lost, not made up later, so the rate never exceeds `rate`.
                counts["skipped"] = counts.get("skipped", 0) + 1
                i += 1
                continue
            await slots.acquire()
            task = asyncio.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if pending:
            await asyncio.wait(pending, timeout=15)


async def soak(db: Path, url: str, minutes: float, rate: float, every: float) -> list[dict]:
    counts: dict[str, int] = {}
    load = asyncio.create_task(post_at_rate(url, rate, minutes * 60, counts))
    rows: list[dict] = []
    start = time.monotonic()
    header = ["t_s", "db_bytes", "wal_bytes", "free_pages", *TABLES]
    print("  ".join(f"{h:>10}" for h in header), flush=True)
    while not load.done():
        await asyncio.wait({load}, timeout=every)
        row = {"t_s": round(time.monotonic() - start), **await asyncio.to_thread(sample, db)}
        rows.append(row)
        print("  ".join(f"{row[h]:>10}" for h in header), flush=True)
    await load
    print(f"answers: {counts}")
    return rows


def plateau(rows: list[dict], key: str = "db_bytes") -> tuple[float, float]:
    """(mean over the last third, largest relative deviation from it)."""
    last = rows[len(rows) - len(rows) // 3 :]
    mean = sum(r[key] for r in last) / len(last)
    return mean, max(abs(r[key] - mean) / mean for r in last)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=20.0, help="callbacks per second")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--dedupe", help="compress the 25h dedupe floor to this duration (e.g. 30s)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cg-soak-"))
    (work / "var").mkdir()
    port, hook_port = free_port(), free_port()
    (work / "gateway.yaml").write_text(config(port, hook_port, args.dedupe))
    shim_path = None
    if args.dedupe:
        shim = work / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(
            "from gateway.config import models\n"
            "from gateway.units import parse_duration\n"
            f"models.MIN_DEDUPE_RETENTION = parse_duration({args.dedupe!r})\n"
        )
        shim_path = str(shim)
    receiver = Server(
        "receiver",
        [sys.executable, str(BENCH / "loopback_receiver.py"), str(hook_port)],
        work,
        hook_port,
        ready_path="/",
    )
    gateway = Server(
        "gateway", [sys.executable, "-m", "gateway", "run", "-c", "gateway.yaml"], work, port
    )
    try:
        receiver.start()
        if shim_path:  # inherited by the gateway (and its workers), started next
            os.environ["PYTHONPATH"] = shim_path
        gateway.start()
        print(
            f"soak: {args.rate:g}/s for {args.minutes:g} min, retention {RETENTION}"
            f" (dedupe {args.dedupe or 'at its 25h floor'}), in {work}"
        )
        rows = asyncio.run(
            soak(
                work / "var" / "gateway.db", gateway.url(PATH), args.minutes, args.rate, args.every
            )
        )
    finally:
        with contextlib.suppress(Exception):
            gateway.stop()
        receiver.stop()
    for key in ("db_bytes", "events", "deliveries"):
        mean, dev = plateau(rows, key)
        print(f"last third: {key} mean {mean:,.0f}, largest deviation {dev:.1%}")
    first, last = rows[0], rows[-1]
    kept = args.dedupe or "25h: they grow all run"
    print(f"dedupe keys: {first['dedupe']} -> {last['dedupe']} (kept {kept})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
