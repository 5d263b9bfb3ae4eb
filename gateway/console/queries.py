"""What the pages show, gathered from the store through the same functions the CLI and the
admin API use (`gateway.delivery.admin`) and the store's indexed console reads. Nothing here
writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.delivery import admin
from gateway.ops.silence import silent_since
from gateway.routing.explain import Previews
from gateway.runtime import Gateway
from gateway.store import AttemptRecord, DeliveryPage, DeliveryRecord, EventRecord, Store
from gateway.store.base import ACTIVITY_WINDOW

#: Deliveries (with attempts and payloads) shown on one message's timeline at most.
TIMELINE_DELIVERIES = 200
#: Queue figures count up to this many per destination and state ("10000+" beyond), so the
#: pages cost the same on any backlog (`Store.queue_figures`); the CLI counts exactly.
COUNT_CAP = 10_000


@dataclass
class SourceRow:
    name: str
    path: str
    last_received_at: float | None
    received_last_hour: int
    quarantined: int
    expect_within: float | None
    silent_since: float | None


@dataclass
class DestinationRow:
    name: str
    type: str
    pending: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_pending: float | None = None
    delivered_last_hour: int = 0
    paused: str | None = None
    #: States whose count stopped at `COUNT_CAP`.
    capped: set[str] = field(default_factory=set)


@dataclass
class Overview:
    sources: list[SourceRow]
    destinations: list[DestinationRow]
    errors: list[DeliveryRecord]


async def overview(ctx: Gateway, now: float) -> Overview:
    store: Store = ctx.open_store()
    config = ctx.config
    since = now - min(3600.0, ACTIVITY_WINDOW)
    activity = await store.source_activity(list(config.sources), since)
    sources = []
    for a in activity:
        cfg = config.sources[a.source]
        sources.append(
            SourceRow(
                a.source,
                cfg.path,
                a.last_received_at,
                a.received,
                a.quarantined,
                cfg.expect_within,
                await silent_since(store, a.source) if cfg.expect_within else None,
            )
        )
    names = list(config.destinations)
    rows = {n: DestinationRow(n, config.destinations[n].type) for n in names}
    for stat in await store.queue_figures(COUNT_CAP):
        row = rows.get(stat["destination"])
        if row is None:  # deliveries of a destination no longer configured
            row = rows[stat["destination"]] = DestinationRow(stat["destination"], "(removed)")
        setattr(row, stat["state"], stat["count"])
        if stat["capped"]:
            row.capped.add(stat["state"])
        if stat["state"] == "pending":
            row.oldest_pending = stat["oldest"]
    delivered = await store.delivered_since(list(rows), since)
    paused = await admin.paused_destinations(store, list(rows))
    for name, row in rows.items():
        row.delivered_last_hour = delivered.get(name, 0)
        row.paused = paused.get(name)
    return Overview(sources, list(rows.values()), await store.recent_errors(10))


@dataclass
class DeliveryView:
    record: DeliveryRecord
    attempts: list[AttemptRecord]
    payload: str
    payload_note: str


@dataclass
class EventView:
    record: EventRecord
    decision: str
    deliveries: list[DeliveryView] = field(default_factory=list)


def decision_of(event: EventRecord, deliveries: list[DeliveryRecord]) -> str:
    """The routing decision in words: routed where (and what some routes suppressed),
    unmatched, filtered or quarantined with why, or still waiting for the router."""
    reason = event.reason or ""
    if event.state == "routed":
        where = ", ".join(sorted({f"{d.destination} (route {d.route})" for d in deliveries}))
        text = f"routed to {where}" if where else "routed"
        return text + (f"; suppressed on {reason}" if reason else "")
    if event.state == "received":
        return f"waiting for the router (held: {reason})" if reason else "waiting for the router"
    return f"{event.state}: {reason}" if reason else event.state


async def timeline(ctx: Gateway, message_uuid: str | None, event_ids: list[str]) -> list[EventView]:
    """Every event of `message_uuid` (or just `event_ids` for an event without one) with its
    decision, deliveries, attempts and rendered payloads, oldest first."""
    store: Store = ctx.open_store()
    if message_uuid is not None:
        events = await store.message_events(message_uuid)
        deliveries = await admin.list_deliveries(
            store, message_uuid=message_uuid, limit=TIMELINE_DELIVERIES
        )
    else:
        found = [await store.get_event(i) for i in event_ids]
        events = [e for e in found if e is not None]
        deliveries = []
    by_event: dict[str, list[DeliveryRecord]] = {}
    for d in deliveries:
        by_event.setdefault(d.event_id, []).append(d)
    previews = Previews(ctx.loaded, ctx.clock)
    views = []
    for event in events:
        mine = by_event.get(event.id, [])
        view = EventView(event, decision_of(event, mine))
        for d in mine:
            shown = await admin.show_delivery(store, d.id)
            record, attempts = shown if shown is not None else (d, [])
            payload, note = previews.payload_of(record)
            view.deliveries.append(DeliveryView(record, attempts, payload, note))
        views.append(view)
    return views


async def resolve(store: Store, q: str) -> str | None:
    """Where the search box's `q` leads: a delivery id, an event id (to its message, or to the
    event alone), else a message_uuid that has events; None when nothing matches."""
    from urllib.parse import quote

    q = q.strip()
    if not q:
        return None
    if await admin.show_delivery(store, q) is not None:
        return f"/console/deliveries/{quote(q, safe='')}"
    event = await store.get_event(q)
    if event is not None:
        if event.message_uuid:
            return f"/console/messages/{quote(event.message_uuid, safe='')}#{quote(q, safe='')}"
        return f"/console/events/{quote(q, safe='')}"
    if await store.message_events(q, limit=1):
        return f"/console/messages/{quote(q, safe='')}"
    return None


@dataclass(frozen=True)
class DeliveryQuery:
    state: str | None
    destination: str | None
    since: float | None
    until: float | None
    before: tuple[float, str] | None
    limit: int = 50

    def page(self) -> DeliveryPage:
        return DeliveryPage(
            self.state, self.destination, self.since, self.until, self.before, self.limit
        )


def parse_cursor(text: str | None) -> tuple[float, str] | None:
    """A ``before`` cursor ``<created_at>_<id>``; `ValueError` when malformed."""
    if not text:
        return None
    stamp, sep, ident = text.partition("_")
    if not sep or not ident:
        raise ValueError("malformed page cursor")
    return float(stamp), ident


def cursor_of(record: DeliveryRecord) -> str:
    return f"{record.created_at!r}_{record.id}"
