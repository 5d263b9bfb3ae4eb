"""Inspection and repair of deliveries, shared by the CLI and the admin HTTP API.

Plain coroutines over a `Store`; nothing here needs a running engine. Pauses are durable marks
in the gateway's own scope (``paused:<destination>``, never purged, out of plugins' reach) that
every engine re-reads (see `gateway.delivery.engine`).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.store import AttemptRecord, DeliveryFilter, DeliveryRecord, EventRecord, Store
from gateway.store.base import DELIVERY_STATES

PAUSE_PREFIX = "paused:"


def _check_state(state: str | None) -> None:
    if state is not None and state not in DELIVERY_STATES:
        raise ValueError(f"unknown state {state!r}; expected one of: {', '.join(DELIVERY_STATES)}")


async def list_deliveries(
    store: Store,
    state: str | None = None,
    destination: str | None = None,
    message_uuid: str | None = None,
    since: float | None = None,
    limit: int = 1000,
) -> list[DeliveryRecord]:
    """Deliveries matching every given filter, oldest first (``as_dict()`` is the --json shape).
    `since` is epoch seconds (creation time). `ValueError` for an unknown state."""
    return (await list_deliveries_page(store, state, destination, message_uuid, since, limit))[0]


async def list_deliveries_page(
    store: Store,
    state: str | None = None,
    destination: str | None = None,
    message_uuid: str | None = None,
    since: float | None = None,
    limit: int = 1000,
) -> tuple[list[DeliveryRecord], bool]:
    """`list_deliveries`, and whether more deliveries than `limit` match (the listing was cut
    short; callers say so rather than let the first `limit` rows pass for all of them)."""
    _check_state(state)
    records = await store.list_deliveries(
        DeliveryFilter(
            state=state,
            destination=destination,
            message_uuid=message_uuid,
            since=since,
            limit=limit + 1,
        )
    )
    return records[:limit], len(records) > limit


async def show_delivery(
    store: Store, delivery_id: str
) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
    """One delivery with its attempt history (oldest first), or None when unknown."""
    return await store.get_delivery(delivery_id)


def delivery_detail(record: DeliveryRecord, attempts: list[AttemptRecord]) -> dict[str, Any]:
    """`show_delivery`'s result as one JSON-ready dict (the event body included)."""
    out = record.as_dict()
    out["event"] = record.event
    out["enrichment"] = record.enrichment
    out["received_at"] = record.received_at
    out["first_attempt_at"] = record.first_attempt_at
    out["attempt_history"] = [
        {
            "number": a.number,
            "started_at": a.started_at,
            "finished_at": a.finished_at,
            "outcome": a.outcome,
            "status": a.status,
            "error": a.error,
            "details": a.details,
        }
        for a in attempts
    ]
    return out


async def replay(
    store: Store,
    now: float,
    ids: list[str] | None = None,
    state: str | None = None,
    destination: str | None = None,
    since: float | None = None,
) -> list[str]:
    """Put deliveries back in the queue, due at `now`, with the same ids (receivers drop
    repeats by ``webhook-id``); attempts and age restart, history is kept.

    Either `ids` (any that are not in flight), or a filter: `state` (required then; usually
    ``dead``), `destination`, `since`. Returns the ids replayed. In-flight deliveries are never
    replayed (their worker owns them).
    """
    if ids:
        return await store.replay_deliveries(list(ids), None, now)
    if state is None:
        raise ValueError("give delivery ids, or --state (for example --state dead)")
    _check_state(state)
    if state == "in_flight":
        raise ValueError("deliveries in flight cannot be replayed; their worker owns them")
    return await store.replay_deliveries(
        None, DeliveryFilter(state=state, destination=destination, since=since, limit=10**9), now
    )


async def replay_quarantined(store: Store, now: float, ids: list[str] | None = None) -> list[str]:
    """Send quarantined events (all of them, or `ids`) back to the router to be checked again
    by today's chain; returns the ids sent. The caller wakes its router."""
    return await store.replay_quarantined(list(ids) if ids else None, now)


async def pause_destination(store: Store, name: str, reason: str, now: float) -> None:
    """Durably stop sending to `name` (every engine notices within its pause poll)."""
    await store.set_mark(
        PAUSE_PREFIX + name, json.dumps({"reason": reason, "at": now}), now, scope="gateway"
    )


async def resume_destination(store: Store, name: str, now: float) -> None:
    """Undo `pause_destination`."""
    await store.set_mark(PAUSE_PREFIX + name, None, now, scope="gateway")


async def paused_reason(store: Store, name: str) -> str | None:
    """Why `name` is paused, or None when it is not."""
    mark = await store.get_mark(PAUSE_PREFIX + name, scope="gateway")
    if mark is None:
        return None
    try:
        return str(json.loads(mark[1]).get("reason") or "paused")
    except (ValueError, AttributeError):
        return mark[1] or "paused"


async def paused_destinations(store: Store, names: list[str]) -> dict[str, str]:
    """``{name: reason}`` for those of `names` that are paused."""
    out = {}
    for name in names:
        reason = await paused_reason(store, name)
        if reason is not None:
            out[name] = reason
    return out


async def list_quarantined(store: Store, limit: int = 1000) -> list[EventRecord]:
    """Events held at intake as invalid, oldest first (``as_dict()`` is the listing shape)."""
    return (await list_quarantined_page(store, limit))[0]


async def list_quarantined_page(store: Store, limit: int = 1000) -> tuple[list[EventRecord], bool]:
    """`list_quarantined`, and whether more than `limit` events are quarantined."""
    events = await store.list_events("quarantined", limit + 1)
    return events[:limit], len(events) > limit
