"""How fast the web console's pages render on a store holding a million events.

    .venv/bin/python bench/console_pages.py                 # 1,000,000 events, ~2-4 minutes
    .venv/bin/python bench/console_pages.py --events 100000 --rounds 5   # a quick look

Fills a SQLite file (the gateway's own schema, `fill_backlog._open`, one transaction without
fsync as that fixture does) with `--events` events of the ``revicom`` source received over the
last 24 hours, and per event one delivery to ``crm`` (and every other event one to ``ops``):
about 90% delivered, 5% pending, 1% pending after a failed try, 4% dead with an error; plus
1,000 quarantined events. Then starts a real gateway on it (``admin.token`` set, both
destinations paused so nothing is sent), logs in, and requests every page `--rounds` times
after one warm-up, sequentially, over one keep-alive connection. Prints the median, p95 and
maximum per page (server time plus loopback HTTP), and whether every p95 is under 300 ms.
The gateway is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from bench_intake import Server, free_port  # noqa: E402
from fill_backlog import RAW, _open  # noqa: E402

from gateway.ids import new_id  # noqa: E402

TOKEN = "bench-console-token-0123456789"
CHUNK = 50_000
BUDGET = 0.300


def fill(db: Path, n: int) -> tuple[float, str, str]:
    """Write the store; returns (seconds, a message_uuid with a dead delivery, its delivery)."""
    started = time.perf_counter()
    rnd = random.Random(17)
    conn = _open(db)
    now = time.time()
    stamp = new_id("evt", now)[4:14]
    sample_uuid = sample_delivery = ""
    try:
        conn.execute("BEGIN")
        for start in range(0, n, CHUNK):
            events, deliveries = [], []
            for i in range(start, min(n, start + CHUNK)):
                eid = f"evt_{stamp}{i:016d}"
                uuid = f"backlog-{i}"
                at = now - 86400 + 86400 * i / n
                events.append((eid, "revicom", at, RAW % i, uuid, at))
                for k, dest in enumerate(["crm", "ops"] if i % 2 else ["crm"]):
                    roll = rnd.random()
                    did = f"msg_{stamp}{i * 2 + k:016d}"
                    if roll < 0.90:
                        row = ("delivered", 1, None, 200, at + 0.2)
                    elif roll < 0.95:
                        row = ("pending", 0, None, None, at)
                    elif roll < 0.96:
                        row = ("pending", 1, "HTTP 503: busy", 503, at + 5)
                    else:
                        row = ("dead", 1, "HTTP 400: unknown customer", 400, at + 0.3)
                        if not sample_delivery and i > n // 2:
                            sample_uuid, sample_delivery = uuid, did
                    state, attempts, error, code, updated = row
                    deliveries.append(
                        (did, eid, dest, state, attempts, at, updated, error, code, uuid)
                    )
            conn.executemany(
                "INSERT INTO events (id, source, received_at, raw, state, message_uuid, event,"
                " updated_at) VALUES (?, ?, ?, ?, 'routed', ?, 'delivered', ?)",
                events,
            )
            conn.executemany(
                "INSERT INTO deliveries (id, event_id, source, route, destination, state,"
                " attempts, next_attempt_at, created_at, updated_at, last_error, last_status,"
                " message_uuid) VALUES (?, ?, 'revicom', 'all', ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                [
                    (d, e, dest, s, a, at, up, err, code, u)
                    for d, e, dest, s, a, at, up, err, code, u in deliveries
                ],
            )
            conn.executemany(
                "INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome,"
                " status, error) VALUES (?, 1, ?, ?, ?, ?, ?)",
                [
                    (
                        d,
                        up - 0.1,
                        up,
                        {"delivered": "delivered", "dead": "dead"}.get(s, "retry"),
                        code,
                        err,
                    )
                    for d, _, _, s, a, _, up, err, code, _ in deliveries
                    if a
                ],
            )
        conn.executemany(
            "INSERT INTO events (id, source, received_at, raw, state, message_uuid, event,"
            " reason, updated_at) VALUES (?, 'revicom', ?, ?, 'quarantined', ?, 'delivered',"
            " 'status: required field is missing', ?)",
            [
                (
                    f"evt_{stamp}{n + q:016d}",
                    now - q,
                    json.dumps({"message_uuid": f"q-{q}"}),
                    f"q-{q}",
                    now - q,
                )
                for q in range(1000)
            ],
        )
        for dest in ("crm", "ops"):  # paused: the engine sends nothing during the run
            conn.execute(
                "INSERT INTO marks (key, rank, value, updated_at) VALUES (?, '', ?, ?)",
                (f"paused:{dest}", json.dumps({"reason": "bench", "at": now}), now),
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started, sample_uuid, sample_delivery


CONFIG = f"""
store: sqlite:///gateway.db
admin: {{token: {TOKEN}}}
sources:
  revicom: {{path: /callbacks/revicom, expect_within: 1h}}
destinations:
  crm: {{type: webhook, url: "http://127.0.0.1:9/crm"}}
  ops: {{type: webhook, url: "http://127.0.0.1:9/ops", payload: envelope}}
routes:
  - {{name: all, match: {{callback_event: delivered}}, to: [crm, ops]}}
"""


def measure(
    client: httpx.Client, method: str, path: str, rounds: int, data: dict[str, str] | None = None
) -> list[float]:
    times = []
    for k in range(rounds + 1):
        t0 = time.perf_counter()
        answer = client.request(method, path, data=data)
        elapsed = time.perf_counter() - t0
        if answer.status_code >= 400:
            raise SystemExit(f"{method} {path}: {answer.status_code}\n{answer.text[:500]}")
        if k:  # the first request warms the caches
            times.append(elapsed)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--keep", type=Path, help="fill (or reuse) the store in this directory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sample = work / "sample.json"
        if not sample.exists():
            (work / "gateway.db").unlink(missing_ok=True)
            seconds, uuid, delivery = fill(work / "gateway.db", args.events)
            sample.write_text(json.dumps([uuid, delivery]))
            print(f"filled {args.events} events in {seconds:.0f}s", flush=True)
        uuid, delivery = json.loads(sample.read_text())
        (work / "gateway.yaml").write_text(CONFIG)
        port = free_port()
        server = Server(
            "gateway",
            [sys.executable, "-m", "gateway", "run", "-c", "gateway.yaml", "--port", str(port)],
            work,
            port,
        )
        try:
            server.start(timeout=300)
            return run(server, args, uuid, delivery)
        except SystemExit:
            print(server.log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.stop()


def run(server: Server, args: argparse.Namespace, uuid: str, delivery: str) -> int:
    with httpx.Client(base_url=server.url(""), timeout=30, follow_redirects=False) as c:
        login = c.post("/console/login", data={"token": TOKEN})
        assert login.status_code == 303, login.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', c.get("/console/").text)
        assert csrf is not None
        middle = c.get("/console/deliveries").text
        cursor = re.search(r'before=([^"&]+)', middle)
        pages: list[tuple[str, str, str, dict[str, str] | None]] = [
            ("overview", "GET", "/console/", None),
            ("deliveries, first page", "GET", "/console/deliveries", None),
            (
                "deliveries, next page",
                "GET",
                f"/console/deliveries?before={cursor.group(1) if cursor else ''}",
                None,
            ),
            ("dead letters", "GET", "/console/deliveries?state=dead", None),
            (
                "deliveries, ops + time window",
                "GET",
                "/console/deliveries?destination=ops&since=2000-01-01T00:00&until=2100-01-01T00:00",
                None,
            ),
            ("search (message_uuid)", "GET", f"/console/search?q={uuid}", None),
            ("message timeline", "GET", f"/console/messages/{uuid}", None),
            ("delivery", "GET", f"/console/deliveries/{delivery}", None),
            ("quarantine", "GET", "/console/quarantine", None),
            ("destinations", "GET", "/console/destinations", None),
            (
                "route tester (sample)",
                "POST",
                "/console/tester",
                {"csrf": csrf.group(1), "sample": "delivered", "source": "revicom"},
            ),
        ]
        print(
            f"\n{'page':32} {'median':>9} {'p95':>9} {'max':>9}   ({args.rounds} requests"
            " each, sequential)"
        )
        worst = 0.0
        for name, method, path, data in pages:
            times = sorted(measure(c, method, path, args.rounds, data))
            p95 = times[max(0, int(len(times) * 0.95) - 1)]
            worst = max(worst, p95)
            print(
                f"{name:32} {statistics.median(times) * 1000:7.1f}ms {p95 * 1000:7.1f}ms"
                f" {times[-1] * 1000:7.1f}ms"
            )
    ok = worst < BUDGET
    print(
        f"\nevery page's p95 under {BUDGET * 1000:.0f} ms: {'yes' if ok else 'NO'}"
        f" (worst p95 {worst * 1000:.1f} ms)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
