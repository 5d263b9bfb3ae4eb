"""`deliveries list|show`, `replay` and `quarantine list`: read and repair the store directly.

These work whether or not the gateway is running; a running gateway picks replayed work up on
its next poll (within a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from gateway.config import load_config
from gateway.errors import UsageError
from gateway.store import DeliveryFilter, Store, store_from_url
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
    flt = DeliveryFilter(
        args.state,
        args.destination,
        args.message_uuid,
        parse_since(args.since, time.time()),
        args.limit,
    )
    records = with_store(args, lambda s: s.list_deliveries(flt))
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


def _show(args: argparse.Namespace) -> int:
    found = with_store(args, lambda s: s.get_delivery(args.id))
    if found is None:
        raise UsageError(f"no delivery with id {args.id!r}")
    record, attempts = found
    if args.json:
        out: dict[str, Any] = record.as_dict()
        out["event"] = record.event
        out["enrichment"] = record.enrichment
        out["attempts_history"] = [a.__dict__ for a in attempts]
        print(json.dumps(out, indent=2))
        return 0
    for key, value in record.as_dict().items():
        print(f"{key:>16}: {value}")
    print(f"{'event':>16}: {record.raw}")
    print("attempts:")
    for a in attempts:
        status = a.status if a.status is not None else "-"
        print(f"  #{a.number} {_when(a.started_at)} {a.outcome:<9} {status} {a.error or ''}")
    return 0


def replay(args: argparse.Namespace) -> int:
    now = time.time()
    if args.quarantined:
        ids = with_store(args, lambda s: s.replay_quarantined(args.ids or None, now))
        print(f"{len(ids)} quarantined event(s) sent back through the chain")
        return 0
    if args.ids and (args.state or args.destination or args.since):
        raise UsageError("give delivery ids or --state/--destination/--since, not both")
    if not args.ids and not args.state:
        raise UsageError("give delivery ids, --state dead, or --quarantined")
    flt = (
        None
        if args.ids
        else DeliveryFilter(
            args.state, args.destination, None, parse_since(args.since, now), limit=1_000_000
        )
    )
    ids = with_store(args, lambda s: s.replay_deliveries(args.ids or None, flt, now))
    missing = set(args.ids) - set(ids) if args.ids else set()
    print(f"{len(ids)} deliver{'y' if len(ids) == 1 else 'ies'} queued again")
    if missing:
        print(f"not replayed (unknown or in flight): {', '.join(sorted(missing))}")
        return 1
    return 0


def quarantine(args: argparse.Namespace) -> int:
    events = with_store(args, lambda s: s.list_events("quarantined", args.limit))
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": e.id,
                        "source": e.source,
                        "received_at": e.received_at,
                        "reason": e.reason,
                        "message_uuid": e.message_uuid,
                        "event": e.payload,
                    }
                    for e in events
                ],
                indent=2,
            )
        )
        return 0
    if not events:
        print("nothing is quarantined")
        return 0
    for e in events:
        print(f"{e.id}  {e.source}  {_when(e.received_at)}  {e.reason}")
        print(f"    {e.raw[:200]}")
    return 0
