"""`deliveries list|show`, `replay`, `quarantine list` and `destinations list|pause|resume`.

They open the store directly, so they work whether or not the gateway is running, and they call
the same functions as the admin HTTP API (`gateway.delivery.admin`). A running gateway picks up
replayed work and pause changes on its next poll (within a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from gateway.config import load_config
from gateway.delivery import admin
from gateway.errors import UsageError
from gateway.store import Store, store_from_url
from gateway.units import parse_duration

T = TypeVar("T")


def parse_since(text: str | None, now: float) -> float | None:
    """An ISO 8601 time or an age like ``1h`` (meaning: since one hour ago)."""
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(
            f"--since: expected an ISO 8601 time or an age like 1h, got {text!r}"
        ) from None


def with_store(args: argparse.Namespace, fn: Callable[[Store], Awaitable[T]]) -> T:
    loaded = load_config(args.config)

    async def main() -> T:
        store = store_from_url(loaded.config.store)
        await store.open()
        try:
            return await fn(store)
        except ValueError as e:
            raise UsageError(str(e)) from None
        finally:
            await store.close()

    return asyncio.run(main())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


def deliveries(args: argparse.Namespace) -> int:
    if args.action == "show":
        return _show(args)
    since = parse_since(args.since, time.time())
    records, more = with_store(
        args,
        lambda s: admin.list_deliveries_page(
            s, args.state, args.destination, args.message_uuid, since, args.limit
        ),
    )
    if more:
        _more_notice(len(records), "deliveries", "--state, --destination or --since")
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
        return 0
    if not records:
        print("no deliveries match")
        return 0
    rows = [
        [
            r.id,
            r.state,
            r.destination,
            r.route,
            str(r.attempts),
            _when(r.next_attempt_at) if r.state == "pending" else "-",
            (r.last_error or "")[:60],
        ]
        for r in records
    ]
    print(_table(rows, ["ID", "STATE", "DESTINATION", "ROUTE", "TRIES", "NEXT", "LAST ERROR"]))
    return 0


def _more_notice(shown: int, what: str, narrow: str) -> None:
    """Tell (on stderr, so that --json output stays one JSON array) that the listing stops at
    --limit while more rows match."""
    print(
        f"showing the first {shown} {what}; more match (raise --limit, or narrow with {narrow})",
        file=sys.stderr,
    )


def _show(args: argparse.Namespace) -> int:
    found = with_store(args, lambda s: admin.show_delivery(s, args.id))
    if found is None:
        raise UsageError(f"no delivery with id {args.id!r}")
    detail = admin.delivery_detail(*found)
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    history = detail.pop("attempt_history")
    for key, value in detail.items():
        if key == "event":
            value = found[0].raw
        elif key.endswith("_at") and isinstance(value, int | float):
            value = _when(value)
        print(f"{key:>17}: {value}")
    print("attempts:")
    for a in history:
        status = a["status"] if a["status"] is not None else "-"
        print(
            f"  #{a['number']} {_when(a['started_at'])} {a['outcome']:<9} {status}"
            f" {a['error'] or ''}"
        )
        if a.get("details"):
            print(f"      details: {json.dumps(a['details'], ensure_ascii=False)}")
    return 0


def replay(args: argparse.Namespace) -> int:
    now = time.time()
    if args.quarantined:
        ids = with_store(args, lambda s: s.replay_quarantined(args.ids or None, now))
        print(f"{len(ids)} quarantined event(s) sent back through the chain")
        return 0
    if args.ids and (args.state or args.destination or args.since):
        raise UsageError("give delivery ids or --state/--destination/--since, not both")
    since = parse_since(args.since, now)
    ids = with_store(
        args,
        lambda s: admin.replay(s, now, args.ids or None, args.state, args.destination, since),
    )
    missing = set(args.ids) - set(ids) if args.ids else set()
    print(f"{len(ids)} deliver{'y' if len(ids) == 1 else 'ies'} queued again")
    if missing:
        print(f"not replayed (unknown or in flight): {', '.join(sorted(missing))}")
        return 1
    return 0


def quarantine(args: argparse.Namespace) -> int:
    events, more = with_store(args, lambda s: admin.list_quarantined_page(s, args.limit))
    if more:
        _more_notice(len(events), "quarantined events", "replaying or fixing them")
    if args.json:
        print(json.dumps([e.as_dict() for e in events], indent=2))
        return 0
    if not events:
        print("nothing is quarantined")
        return 0
    for e in events:
        print(f"{e.id}  {e.source}  {_when(e.received_at)}  {e.reason}")
        print(f"    {e.raw[:200]}")
    return 0


def destinations(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    names = list(loaded.config.destinations)
    if args.action != "list" and args.name not in names:
        raise UsageError(f"no destination named {args.name!r} (destinations: {', '.join(names)})")
    now = time.time()
    if args.action == "pause":
        with_store(args, lambda s: admin.pause_destination(s, args.name, args.reason, now))
        print(f"{args.name}: paused ({args.reason})")
        return 0
    if args.action == "resume":
        with_store(args, lambda s: admin.resume_destination(s, args.name, now))
        print(f"{args.name}: resumed")
        return 0

    async def gather(store: Store) -> tuple[dict[str, str], list[dict[str, Any]]]:
        return await admin.paused_destinations(store, names), await store.queue_stats(now)

    paused, stats = with_store(args, gather)
    queued: dict[str, dict[str, int]] = {}
    for row in stats:
        queued.setdefault(row["destination"], {})[row["state"]] = row["count"]
    rows = [
        [
            n,
            d.type,
            "yes" if d.enabled else "no",
            str(queued.get(n, {}).get("pending", 0)),
            str(queued.get(n, {}).get("dead", 0)),
            paused.get(n, "-"),
        ]
        for n, d in loaded.config.destinations.items()
    ]
    print(_table(rows, ["NAME", "TYPE", "ENABLED", "PENDING", "DEAD", "PAUSED"]))
    return 0
