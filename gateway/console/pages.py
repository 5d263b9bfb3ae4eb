"""Read-only pages: the overview, the search box's landing, and the message timeline."""

from __future__ import annotations

from sanic import Request, response
from sanic.response import HTTPResponse

from gateway.console import queries
from gateway.console.render import gateway_of, page


async def overview(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    now = ctx.clock.now()
    data = await queries.overview(ctx, now)
    return page(request, "overview.html", section="overview", data=data)


async def search(request: Request) -> HTTPResponse:
    q = request.args.get("q", "").strip()
    target = await queries.resolve(gateway_of(request).open_store(), q) if q else None
    if target is not None:
        return response.redirect(target, status=303)
    return page(request, "search.html", 404 if q else 200, section="search", searched=q)


async def message(request: Request, message_uuid: str) -> HTTPResponse:
    ctx = gateway_of(request)
    events = await queries.timeline(ctx, message_uuid, [])
    return page(
        request,
        "message.html",
        200 if events else 404,
        section="search",
        title=f"Message {message_uuid}",
        message_uuid=message_uuid,
        events=events,
    )


async def event(request: Request, event_id: str) -> HTTPResponse:
    ctx = gateway_of(request)
    found = await ctx.open_store().get_event(event_id)
    if found is not None and found.message_uuid:
        return response.redirect(f"/console/messages/{found.message_uuid}#{event_id}", status=303)
    events = await queries.timeline(ctx, None, [event_id])
    return page(
        request,
        "message.html",
        200 if events else 404,
        section="search",
        title=f"Event {event_id}",
        message_uuid=None,
        events=events,
    )
