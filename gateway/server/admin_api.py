"""The admin HTTP API under ``/admin``: inspect and repair without a shell on the box.

Off unless ``admin.token`` is set; every request needs ``Authorization: Bearer <token>``
(compared in constant time). Wrong tokens count per client address together with the console's
wrong logins: past ``admin.max_failures`` the address gets 429 (`gateway.console.guard`).
The handlers call the same functions as the CLI verbs (`gateway.delivery.admin`), so both
behave identically.

    GET  /admin/deliveries?state=&destination=&message_uuid=&since=&limit=
    GET  /admin/deliveries/<id>
    POST /admin/replay              {"ids": [...]} | {"state": "dead", "destination", "since"}
                                    | {"quarantined": true, "ids": [...] (optional)}
    GET  /admin/quarantine?limit=
                                    (both lists answer ``X-Has-More: true`` when more rows match
                                    than ``limit``, default 1000, let through)
    GET  /admin/destinations
    POST /admin/destinations/<name>/pause   {"reason": "..."} (optional)
    POST /admin/destinations/<name>/resume
    POST /admin/reload              validate the config file and load it

Bodies and query strings are validated by the models of `gateway.server.admin_models` before
anything is read or changed: a request they refuse is answered ``400 {"error": "bad_request",
"detail": ["field.path: message", ...]}`` and changes nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from sanic import Blueprint, Request, response
from sanic.response import HTTPResponse

from gateway.console.guard import AdminGuard
from gateway.delivery import admin
from gateway.errors import ConfigError, StoreError
from gateway.intake.responses import error
from gateway.runtime import Gateway
from gateway.server.admin_models import (
    DeliveriesQuery,
    PauseRequest,
    QuarantineQuery,
    ReplayRequest,
    RequestInvalid,
    parse,
    parse_query,
)

Handler = Callable[..., Awaitable[HTTPResponse]]


def _more(more: bool) -> dict[str, str]:
    return {"X-Has-More": "true" if more else "false"}


def admin_blueprint() -> Blueprint:
    """The /admin routes; the token is read from the live config, so a reload can set, change
    or remove it (without a token every /admin path answers 404)."""
    bp = Blueprint("admin", url_prefix="/admin")

    @bp.on_request
    async def authorize(request: Request) -> HTTPResponse | None:
        gw: Gateway = request.app.ctx.gateway
        config = gw.config
        token = config.admin.token
        if token is None:
            return error(404, "not_found", "the admin API is off (set admin.token to enable it)")
        guard: AdminGuard = request.app.ctx.admin_guard
        addr = guard.address(request, config.server.trusted_proxies)
        now = gw.clock.now()
        wait = guard.retry_after(config.admin, addr, now)
        if wait is not None:
            return error(
                429,
                "too_many_failures",
                f"too many wrong tokens from {addr}; try again in {wait}s",
                {"Retry-After": str(wait)},
            )
        header = request.headers.get("authorization")
        if not hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode()):
            if header is not None:  # a missing header is not a guess
                guard.failed(config.admin, addr, now, "admin API")
            return error(
                401,
                "unauthorized",
                "a valid bearer token is required",
                {"WWW-Authenticate": 'Bearer realm="callback-gateway admin"'},
            )
        guard.succeeded(config.admin, addr)
        return None

    def ctx(request: Request) -> Gateway:
        gw: Gateway = request.app.ctx.gateway
        return gw

    def guarded(fn: Handler) -> Handler:
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
            try:
                return await fn(request, *args, **kwargs)
            except RequestInvalid as e:
                return error(400, "bad_request", e.problems)
            except ValueError as e:
                return error(400, "bad_request", str(e))
            except StoreError as e:
                return error(503, "store_unavailable", str(e))

        wrapper.__name__ = fn.__name__
        return wrapper

    @bp.get("/deliveries")
    @guarded
    async def deliveries(request: Request) -> HTTPResponse:
        q = parse_query(DeliveriesQuery, request.args)
        records, more = await admin.list_deliveries_page(
            ctx(request).open_store(), q.state, q.destination, q.message_uuid, q.since, q.limit
        )
        return response.json([r.as_dict() for r in records], headers=_more(more))

    @bp.get("/deliveries/<delivery_id>")
    @guarded
    async def delivery(request: Request, delivery_id: str) -> HTTPResponse:
        found = await admin.show_delivery(ctx(request).open_store(), delivery_id)
        if found is None:
            return error(404, "not_found", f"no delivery with id {delivery_id!r}")
        return response.json(admin.delivery_detail(*found))

    @bp.post("/replay")
    @guarded
    async def replay(request: Request) -> HTTPResponse:
        req = parse(ReplayRequest, body_of(request))
        c = ctx(request)
        now = c.clock.now()
        if req.quarantined:
            ids = await admin.replay_quarantined(c.open_store(), now, req.ids)
            c.wake_router()
            return response.json({"replayed": ids})
        ids = await admin.replay(
            c.open_store(), now, req.ids, req.state, req.destination, req.since
        )
        c.wake_engine()
        return response.json({"replayed": ids})

    @bp.get("/quarantine")
    @guarded
    async def quarantine(request: Request) -> HTTPResponse:
        q = parse_query(QuarantineQuery, request.args)
        events, more = await admin.list_quarantined_page(ctx(request).open_store(), q.limit)
        return response.json([e.as_dict() for e in events], headers=_more(more))

    @bp.get("/destinations")
    @guarded
    async def destinations(request: Request) -> HTTPResponse:
        c = ctx(request)
        names = list(c.config.destinations)
        paused = await admin.paused_destinations(c.open_store(), names)
        local = c.engine.status() if c.engine is not None else {}
        return response.json(
            [
                {
                    "name": n,
                    "type": d.type,
                    "enabled": d.enabled,
                    "paused": paused.get(n),
                    "in_flight_here": local.get(n, {}).get("in_flight", 0),
                }
                for n, d in c.config.destinations.items()
            ]
        )

    @bp.post("/destinations/<name>/<action:pause|resume>")
    @guarded
    async def pause_resume(request: Request, name: str, action: str) -> HTTPResponse:
        c = ctx(request)
        if name not in c.config.destinations:
            return error(404, "not_found", f"no destination named {name!r}")
        now = c.clock.now()
        if action == "pause":
            reason = parse(PauseRequest, body_of(request)).reason
            if c.engine is not None:
                await c.engine.pause(name, reason)
            else:
                await admin.pause_destination(c.open_store(), name, reason, now)
        elif c.engine is not None:
            await c.engine.resume(name)
        else:
            await admin.resume_destination(c.open_store(), name, now)
        return response.json({"name": name, "paused": action == "pause"})

    @bp.post("/reload")
    @guarded
    async def reload(request: Request) -> HTTPResponse:
        from gateway.server.reload import reload_gateway

        try:
            await reload_gateway(request.app)
        except ConfigError as e:
            return error(422, "invalid_config", e.problems)
        return response.json({"reloaded": True})

    return bp


def body_of(request: Request) -> Any:
    """The request's JSON body; an empty body is an empty object (`parse` checks the rest)."""
    return request.json if request.body else {}
