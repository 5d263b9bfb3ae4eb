"""The deliveries pages: keyset-paged listing (dead letters are ``state=dead``), one delivery
with its attempts, and replay of one or a selection (`gateway.delivery.admin.replay`)."""

from __future__ import annotations

from urllib.parse import urlencode

from sanic import Request
from sanic.response import HTTPResponse

from gateway.console import queries
from gateway.console.render import (
    form_of,
    gateway_of,
    page,
    parse_datetime_local,
    redirect_with_notice,
)
from gateway.delivery import admin
from gateway.routing.explain import Previews
from gateway.store.base import DELIVERY_STATES

PAGE_SIZE = 50


async def listing(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    args = request.args
    state = args.get("state") or None
    if state is not None and state not in DELIVERY_STATES:
        raise ValueError(f"unknown state {state!r}")
    destination = args.get("destination") or None
    try:
        since = parse_datetime_local(args.get("since"))
        until = parse_datetime_local(args.get("until"))
    except ValueError:
        raise ValueError("times are YYYY-MM-DDTHH:MM (UTC)") from None
    query = queries.DeliveryQuery(
        state, destination, since, until, queries.parse_cursor(args.get("before")), PAGE_SIZE
    )
    records = await ctx.open_store().page_deliveries(query.page())
    filters = {
        k: v
        for k, v in (
            ("state", state or ""),
            ("destination", destination or ""),
            ("since", args.get("since", "")),
            ("until", args.get("until", "")),
        )
        if v
    }
    next_url = None
    if len(records) == PAGE_SIZE:
        next_url = "/console/deliveries?" + urlencode(
            {**filters, "before": queries.cursor_of(records[-1])}
        )
    first_url = "/console/deliveries?" + urlencode(filters) if query.before else None
    names = sorted(set(ctx.config.destinations) | ({destination} if destination else set()))
    return page(
        request,
        "deliveries.html",
        section="dead" if state == "dead" else "deliveries",
        records=records,
        state=state,
        destination=destination,
        since=args.get("since", ""),
        until=args.get("until", ""),
        states=DELIVERY_STATES,
        destinations=names,
        next_url=next_url,
        first_url=first_url,
        here=request.path + (f"?{request.query_string}" if request.query_string else ""),
    )


async def show(request: Request, delivery_id: str) -> HTTPResponse:
    ctx = gateway_of(request)
    found = await admin.show_delivery(ctx.open_store(), delivery_id)
    if found is None:
        return page(
            request,
            "error.html",
            404,
            title="No such delivery",
            detail=f"No delivery has the id {delivery_id}.",
        )
    record, attempts = found
    payload, note = Previews(ctx.loaded, ctx.clock).payload_of(record)
    return page(
        request,
        "delivery.html",
        section="deliveries",
        d=record,
        attempts=attempts,
        payload=payload,
        payload_note=note,
    )


async def replay(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    form = form_of(request)
    ids = [form["one"][0]] if form.get("one") else list(form.getlist("id") or [])
    if not ids:
        notice = "Nothing selected: tick the deliveries to replay."
    else:
        replayed = await admin.replay(ctx.open_store(), ctx.clock.now(), ids)
        ctx.wake_engine()
        skipped = len(ids) - len(replayed)
        notice = f"Replayed {len(replayed)} deliver{'y' if len(replayed) == 1 else 'ies'}."
        if skipped:
            notice += f" {skipped} skipped (in flight or unknown)."
    return redirect_with_notice(form.get("back"), "/console/deliveries?state=dead", notice)
