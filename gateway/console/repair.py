"""Quarantine (list with reasons and raw bodies; replay one, a selection or all through today's
chain) and destinations (queue figures; pause with a reason, resume). The same calls as the
admin API: `Store.replay_quarantined` then waking the router; the engine's `pause`/`resume`
(or `gateway.delivery.admin`'s when this process runs no engine)."""

from __future__ import annotations

from sanic import Request
from sanic.response import HTTPResponse

from gateway.console.queries import COUNT_CAP
from gateway.console.render import form_of, gateway_of, page, redirect_with_notice
from gateway.delivery import admin

#: Quarantined events shown on the page (oldest first); "Replay all" takes every one.
SHOWN = 200


async def quarantine(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    events, more = await admin.list_quarantined_page(ctx.open_store(), SHOWN)
    return page(request, "quarantine.html", section="quarantine", events=events, more=more)


async def replay_quarantined(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    form = form_of(request)
    ids: list[str] | None
    if form.get("all"):
        ids = None
    elif form.get("one"):
        ids = [form["one"][0]]
    else:
        ids = list(form.getlist("id") or [])
    if ids == []:
        notice = "Nothing selected: tick the events to replay."
    else:
        replayed = await ctx.open_store().replay_quarantined(ids, ctx.clock.now())
        ctx.wake_router()
        n = len(replayed)
        notice = f"Sent {n} event{'' if n == 1 else 's'} back through today's chain."
    return redirect_with_notice(form.get("back"), "/console/quarantine", notice)


async def destinations(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    names = list(ctx.config.destinations)
    paused = await admin.paused_destinations(ctx.open_store(), names)
    stats: dict[str, dict[str, str]] = {}
    for row in await ctx.open_store().queue_figures(COUNT_CAP):
        shown = f"{row['count']}+" if row["capped"] else str(row["count"])
        stats.setdefault(row["destination"], {})[row["state"]] = shown
    rows = [
        {
            "name": n,
            "type": d.type,
            "enabled": d.enabled,
            "paused": paused.get(n),
            "pending": stats.get(n, {}).get("pending", "0"),
            "in_flight": stats.get(n, {}).get("in_flight", "0"),
            "dead": stats.get(n, {}).get("dead", "0"),
        }
        for n, d in ctx.config.destinations.items()
    ]
    return page(request, "destinations.html", section="destinations", rows=rows)


async def pause_resume(request: Request, name: str, action: str) -> HTTPResponse:
    ctx = gateway_of(request)
    if name not in ctx.config.destinations:
        raise ValueError(f"no destination named {name!r}")
    if action == "pause":
        reason = (form_of(request).get("reason") or "").strip() or "paused by an operator"
        if ctx.engine is not None:
            await ctx.engine.pause(name, reason)
        else:
            await admin.pause_destination(ctx.open_store(), name, reason, ctx.clock.now())
        notice = f"Paused {name}: {reason}"
    else:
        if ctx.engine is not None:
            await ctx.engine.resume(name)
        else:
            await admin.resume_destination(ctx.open_store(), name, ctx.clock.now())
        notice = f"Resumed {name}."
    return redirect_with_notice(form_of(request).get("back"), "/console/destinations", notice)
