"""The whole benchmark suite in one command: every target under the same load, pinned, in one run.

    .venv/bin/python bench/run.py                    # every phase, SQLite, one round
    .venv/bin/python bench/run.py --repeat 3         # three rounds; medians of per-round ratios
    .venv/bin/python bench/run.py --phases bare,forward,node-red,e2e1 --duration 15
    .venv/bin/python bench/run.py --store sqlite --store redis://127.0.0.1:6379/0
    .venv/bin/python bench/run.py --no-pin           # a machine without two free cores
    .venv/bin/python bench/run.py --phases bare,intake --repeat 5 \
        --baseline "env PYTHONPATH=/tmp/old .venv/bin/python"   # new code against an old one

How (see docs/performance.md): the server under test runs pinned to CPU 0 (``taskset``), wrk
(one thread) and the receiver to CPU 1; the receiver is Debian's nginx answering 204 and logging
each arrival's time, so delivered/s = arrivals / span of arrivals. Every target gets the same
wrk Lua load (bench/intake_post.lua: a contract-shaped one-event array, a new message_uuid per
request, Basic auth). In each round, one target at a time:

- ``bare``: bare Sanic (parse, 200), the framework's ceiling;
- ``forward``: Sanic + aiohttp forwarding each request to the receiver, storing nothing;
- ``node-red``: http in -> http response + http request to the receiver;
- per ``--store``: ``intake`` (the gateway, no routes), ``e2e1`` / ``e2e3`` (one / three
  webhooks), ``e2e1-both`` (one webhook, the gateway pinned to both CPUs, with
  ``--both-cores-config`` added to its YAML), ``batch`` (``--batch-events`` events per
  request), ``two-inst`` (two gateways on one database, one webhook, both loaded at once);
- once, SQLite fixtures: ``history`` (intake on a store holding ``--history`` events),
  ``drain`` (``--drain`` queued deliveries), ``backlog`` (resident memory with ``--backlog``
  pending deliveries).

With ``--baseline CMD`` every store phase also runs the gateway with ``CMD`` as its Python
(for example a ``git worktree`` of an older commit on ``PYTHONPATH``), right before or after the
code under test (the order alternates by round), and the report adds the same-round ratios of
the two. On a machine whose speed drifts, that compares two versions better than two runs.

Every phase is bounded in time; servers, wrk and nginx are stopped by their PIDs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from stores import StoreUnderTest  # noqa: E402
from suite import Bench, Row  # noqa: E402

ROUND_PHASES = ("bare", "forward", "node-red")
STORE_PHASES = ("intake", "e2e1", "e2e3", "e2e1-both", "batch", "two-inst")
ONCE_PHASES = ("history", "drain", "backlog")
PHASES = ROUND_PHASES + STORE_PHASES + ONCE_PHASES
DEFAULT_PHASES = tuple(p for p in PHASES if p != "history")
BOTH_CORES_CONFIG = "delivery: {processes: 1}\n"
#: Bare Sanic's requests/s in the issue's own quiet run (2026-12-04), where its absolute batch
#: target (20,000 events/s) was set: the report also states that target per bare Sanic request.
ISSUE_BARE = 21_199
#: Suffix of the targets run with ``--baseline``.
BASE = "@base"


def run_rounds(b: Bench, stores: list[StoreUnderTest]) -> None:
    a = b.args
    for r in range(1, a.repeat + 1):
        b.round = r
        print(f"[round {r}/{a.repeat}]", flush=True)
        for phase, fn in (("bare", b.bare), ("forward", b.forwarder), ("node-red", b.node_red)):
            if phase in a.phases:
                guarded(b, phase, fn)
        # With a baseline, each store phase runs twice in a row: the baseline first in odd
        # rounds, the code under test first in even ones.
        variants: list[tuple[str, list[str] | None]] = [("", None)]
        if a.baseline:
            variants.append((BASE, a.baseline.split()))
            if r % 2:
                variants.reverse()
        for store in stores:
            try:
                for phase in STORE_PHASES:
                    if phase not in a.phases:
                        continue
                    for suffix, python in variants:
                        b.suffix, b.python = suffix, python
                        try:
                            store_phase(b, phase, store)
                        finally:
                            b.suffix, b.python = "", None
            finally:
                store.cleanup()
    sqlite = StoreUnderTest("sqlite")
    for phase, run_fixture in (("history", b.history), ("drain", b.drain), ("backlog", b.backlog)):
        if phase in a.phases:
            print(f"[{phase}]", flush=True)
            guarded(b, phase, run_fixture, sqlite)


def store_phase(b: Bench, phase: str, store: StoreUnderTest) -> None:
    if phase == "intake":
        guarded(b, phase, b.intake, store)
    elif phase in ("e2e1", "e2e3"):
        guarded(b, phase, b.e2e, store, int(phase[-1]))
    elif phase == "e2e1-both":
        guarded(b, phase, b.e2e, store, 1, True)
    elif phase == "batch":
        guarded(b, phase, b.batch, store)
    else:
        guarded(b, phase, b.two_instances, store)


def guarded(b: Bench, phase: str, fn: Any, *args: Any) -> None:
    """Run one phase; a target that fails to start is noted and the run goes on."""
    try:
        fn(*args)
    except SystemExit as e:
        print(f"  {phase}: {e}", flush=True)
        b.note(f"round {b.round} {phase}: {e}")
    finally:
        for s in b.servers:  # whatever the phase left running
            s.stop()


# -- report ----------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def per_round(rows: list[Row], target: str, conns: int | None = None) -> dict[int, Row]:
    return {r.round: r for r in rows if r.target == target and conns in (None, r.conns)}


def report(b: Bench) -> str:
    rows = b.rows
    w = max([15, *(len(r.target) + 1 for r in rows)])  # the target column
    out = [
        f"{'target':<{w}}{'store':<7}{'conns':>5}{'req/s':>9}{'ack p50':>9}{'ack p99':>9}"
        f"{'err':>5}{'cpu us':>8}{'deliv/s':>9}{'÷bare':>8}{'÷node-red':>10}{'÷fwd':>7}"
        f"{'rounds':>7}",
    ]
    keys = list(dict.fromkeys((r.target, r.store, r.conns) for r in rows))
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    for key in keys:
        mine = [r for r in rows if (r.target, r.store, r.conns) == key]
        bare = per_round(rows, "bare-sanic", key[2])
        nr, fwd = per_round(rows, "node-red"), per_round(rows, "aiohttp-fwd")

        def ratio(refs: dict[int, Row], mine: list[Row] = mine, deliv: bool = True) -> float:
            vals = []
            for r in mine:
                ref = refs.get(r.round)
                got = r.delivered if deliv else r.rps
                base = ref.delivered if (ref and deliv) else (ref.rps if ref else None)
                if got is not None and base:
                    vals.append(got / base)
            return med(vals)

        d = {
            "rps": med([r.rps for r in mine]),
            "p50": med([r.p50 for r in mine]),
            "p99": med([r.p99 for r in mine]),
            "err": sum(r.errors for r in mine),
            "cpu": med([r.cpu_us for r in mine]),
            "deliv": med([r.delivered for r in mine if r.delivered is not None]),
            "bare": ratio(bare, deliv=False),
            "nr": ratio(nr),
            "fwd": ratio(fwd),
            "events": mine[0].events,
        }
        results[key] = d

        def pct(v: float) -> str:
            return f"{v:.0%}" if v else "-"

        def x(v: float) -> str:
            return f"{v:.2f}x" if v else "-"

        has_deliv = any(r.delivered is not None for r in mine)
        deliv = f"{d['deliv']:.0f}" if has_deliv else "-"
        out.append(
            f"{key[0]:<{w}}{key[1]:<7}{key[2]:>5}{d['rps']:>9.0f}{d['p50']:>9.2f}{d['p99']:>9.2f}"
            f"{d['err']:>5.0f}{d['cpu']:>8.0f}{deliv:>9}"
            f"{pct(d['bare']):>8}{x(d['nr'] if has_deliv else 0):>10}"
            f"{x(d['fwd'] if has_deliv else 0):>7}{len(mine):>7}"
        )
    out.append(
        "(medians over rounds; ratios are medians of each round's ratio: req/s ÷ bare Sanic at the"
        " same connections, delivered events/s ÷ Node-RED's and the aiohttp forwarder's)"
    )
    out += against_baseline(b)
    if b.drain_result:
        n, got, rate, peak, cpu_us = b.drain_result
        out.append(f"drain: {got}/{n} deliveries at {rate:.0f}/s, gateway CPU {cpu_us:.0f} us per"
                   f" delivery, peak RSS {peak:.0f} MiB")  # fmt: skip
    if b.memory:
        out.append("resident memory (VmRSS of the gateway's processes):")
        out += [f"  {k:<58}{v:>7.0f} MiB" for k, v in b.memory.items()]
    out += ["", "targets (issue 18; medians of same-round ratios):"]
    out += targets(b, results)
    out += [f"note: {n}" for n in b.notes]
    return "\n".join(out)


def against_baseline(b: Bench) -> list[str]:
    """Per target run with ``--baseline``: the code under test ÷ the baseline, medians of the
    same-round ratios (req/s, delivered/s, CPU per request), and both ack p99 medians."""
    if not b.args.baseline:
        return []
    out = [f"code under test ÷ baseline ({b.args.baseline}), medians of same-round ratios:"]
    keys = dict.fromkeys((r.target, r.store, r.conns) for r in b.rows if r.target.endswith(BASE))
    for base_target, store, conns in keys:
        target = base_target.removesuffix(BASE)
        pairs = []
        for r in b.rows:
            if (r.target, r.store, r.conns) != (target, store, conns):
                continue
            base = next(
                (x for x in b.rows if (x.target, x.store, x.conns, x.round)
                 == (base_target, store, conns, r.round)), None)  # fmt: skip
            if base is not None:
                pairs.append((r, base))
        if not pairs:
            continue

        def ratio(got: list[float | None], ref: list[float | None]) -> str:
            vals = [g / f for g, f in zip(got, ref, strict=True) if g is not None and f]
            return f"{med(vals):.3f}" if vals else "-"

        new, old = [p[0] for p in pairs], [p[1] for p in pairs]
        rps = ratio([n.rps for n in new], [o.rps for o in old])
        deliv = ratio([n.delivered for n in new], [o.delivered for o in old])
        cpu = ratio([n.cpu_us for n in new], [o.cpu_us for o in old])
        p99_new, p99_old = med([n.p99 for n in new]), med([o.p99 for o in old])
        out.append(
            f"  {target:<14} {store:<7} c={conns:<3} req/s {rps}  delivered/s {deliv}"
            f"  cpu/req {cpu}  ack p99 {p99_new:.2f} ms vs {p99_old:.2f} ms  ({len(pairs)} pairs)"
        )
    return out


def targets(b: Bench, res: dict[tuple[str, str, int], dict[str, float]]) -> list[str]:
    def check(ok: bool, text: str) -> str:
        return f"  [{'PASS' if ok else 'FAIL'}] {text}"

    out = []
    for (target, store, conns), d in res.items():
        if target == "e2e-1" and d["nr"]:
            out.append(
                check(
                    d["nr"] >= 1.5,
                    f"{store}: e2e one webhook, one core:"
                    f" {d['deliv']:.0f} ev/s = {d['nr']:.2f}x Node-RED (>= 1.5x)",
                )
            )
        if target == "e2e-1-2cores" and d["nr"]:
            out.append(
                check(
                    d["nr"] >= 2.5,
                    f"{store}: e2e one webhook, both cores:"
                    f" {d['deliv']:.0f} ev/s = {d['nr']:.2f}x Node-RED (>= 2.5x)",
                )
            )
        if target == "intake" and conns == 32 and d["bare"]:
            bare = res.get(("bare-sanic", "-", 32), {})
            # Little's law: with `conns` requests in flight the mean ack is conns / rate, so at
            # 40% of bare Sanic's rate no server's p99 can be below this mean.
            floor = conns / (0.4 * bare["rps"]) * 1000 if bare.get("rps") else 0.0
            out.append(
                check(
                    d["bare"] >= 0.4 and d["p99"] < 10,
                    f"{store}: intake at 32 connections {d['bare']:.0%} of bare Sanic"
                    f" (>= 40%), ack p99 {d['p99']:.1f} ms (< 10 ms; bare Sanic's own p99 in"
                    f" this run: {bare.get('p99', 0.0):.1f} ms; the mean ack at 40% of bare"
                    f" Sanic's rate: {floor:.1f} ms)",
                )
            )
        if target == "batch-100":
            ev = d["rps"] * d["events"]
            out.append(
                check(
                    ev >= 20_000,
                    f"{store}: {d['events']:.0f}-event batches at"
                    f" {conns} connections: {ev:.0f} events/s (>= 20,000)",
                )
            )
            if d["bare"]:  # the same target in this machine's units (see ISSUE_BARE)
                per_bare = d["bare"] * d["events"]
                out.append(
                    check(
                        per_bare >= 20_000 / ISSUE_BARE,
                        f"{store}: the same, per bare Sanic request/s of this round:"
                        f" {per_bare:.2f}x (>= {20_000 / ISSUE_BARE:.2f}x = 20,000 events/s"
                        f" where bare Sanic did {ISSUE_BARE:,} requests/s)",
                    )
                )
    big = [v for k, v in b.memory.items() if k.startswith(f"{b.args.backlog} pending")]
    if big:
        out.append(
            check(
                max(big) < 200,
                f"memory with {b.args.backlog} pending deliveries: {max(big):.0f} MiB (< 200 MiB)",
            )
        )
    return out  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 s runs, smaller fixtures")
    p.add_argument("--duration", type=float, help="seconds per load run (10; quick 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per target (2; quick 1)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every target (1)")
    p.add_argument("--connections", default="32", help="intake runs (32; e.g. 1,32,256)")
    p.add_argument("--e2e-conns", type=int, default=32, help="forwarding and batch runs (32)")
    p.add_argument("--store", action="append", help="sqlite (default), redis://..., postgresql://")
    p.add_argument("--batch-events", type=int, default=100, help="events per batch request")
    p.add_argument(
        "--both-cores-config",
        default=BOTH_CORES_CONFIG,
        help="YAML added to the gateway's config in e2e1-both (default: delivery: {processes: 1})",
    )
    p.add_argument("--drain", type=int, help="deliveries for the drain phase (100000)")
    p.add_argument("--backlog", type=int, help="pending deliveries for memory (1000000)")
    p.add_argument("--history", type=int, help="routed events for the history phase (1000000)")
    p.add_argument("--drain-timeout", type=float, default=300.0, help="bound per drain (300 s)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-pin", action="store_true", help="do not pin (no two free cores)")
    p.add_argument("--server-cpus", default="0", help="CPU list for the server under test (0)")
    p.add_argument("--client-cpus", default="1", help="CPU list for wrk and nginx (1)")
    p.add_argument("--no-node-red", action="store_true", help="skip the Node-RED target")
    p.add_argument("--phases", default=",".join(DEFAULT_PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)}")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory and logs")
    p.add_argument(
        "--baseline",
        metavar="CMD",
        help="also run every store phase with CMD as the gateway's Python (e.g. 'env"
        " PYTHONPATH=/path/to/old/worktree .venv/bin/python'), and report new ÷ baseline",
    )
    a = p.parse_args()
    q = a.quick
    a.duration = a.duration or (3.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.drain = a.drain or (20_000 if q else 100_000)
    a.backlog = a.backlog or (200_000 if q else 1_000_000)
    a.history = a.history or (200_000 if q else 1_000_000)
    a.phases = set(a.phases.split(","))
    if a.phases - set(PHASES):
        p.error(f"--phases: unknown {', '.join(sorted(a.phases - set(PHASES)))}")
    a.connections = [int(c) for c in a.connections.split(",")]
    a.store = a.store or ["sqlite"]
    return a


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    a = parse_args()
    # SIGTERM unwinds like Ctrl-C (past `guarded`), so the servers, wrk and nginx started here
    # are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    if not shutil.which("wrk"):
        print("bench/run.py needs wrk on the PATH (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if not a.no_pin:
        os.sched_setaffinity(0, {int(c) for c in a.client_cpus.split(",")})
    work = Path(tempfile.mkdtemp(prefix="bench-run-"))
    pin = "no pinning" if a.no_pin else f"server CPU {a.server_cpus}, wrk+nginx CPU {a.client_cpus}"
    print(f"bench/run.py: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f},"
          f" {a.duration:g}s per run, {pin}, workdir {work}", flush=True)  # fmt: skip
    b = Bench(a, work)
    try:
        b.receiver.start()
        run_rounds(b, [StoreUnderTest(s) for s in a.store])
    finally:
        b.stop_all()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(b))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}: other work on the machine shares"
          " the cores; compare ratios within one run.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
