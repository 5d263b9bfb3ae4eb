"""The console's blueprint: the session guard, login and logout, the stylesheet, and the
routes of every page (the pages themselves live in `pages`, `deliveries`, `repair`, `tester`).

    GET  /console/                       overview
    GET  /console/login, POST            the login form (password field ``token``; wrong
                                         tokens count per address, `gateway.console.guard`)
    POST /console/logout                 end the session
    GET  /console/search?q=              to a delivery, an event's message, or a message
    GET  /console/messages/<uuid>        a message's timeline;  /console/events/<id> one event's
    GET  /console/deliveries?state=&destination=&since=&until=&before=   keyset pages
    GET  /console/deliveries/<id>        one delivery with its attempts
    POST /console/deliveries/replay      ``id`` (several) or ``one``
    GET  /console/quarantine             POST /console/quarantine/replay (``id``/``one``/``all``)
    GET  /console/destinations           POST /console/destinations/<name>/pause|resume
    GET  /console/tester                 POST: explain a pasted body or a sample

Every path answers 404 while ``admin.token`` is unset (read from the live config, so a reload
turns the console on or off). Without a valid session a GET is redirected to the login page and
a POST is refused (403); a POST without its session's CSRF token is refused (403) before the
handler runs, so nothing changes. GET handlers never change anything.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from sanic import Blueprint, Request, response
from sanic.response import HTTPResponse

from gateway.console import deliveries, pages, repair, sessions, tester
from gateway.console.guard import AdminGuard
from gateway.console.render import form_of, gateway_of, page
from gateway.errors import StoreError

log = logging.getLogger("gateway.console")
Handler = Callable[..., Coroutine[Any, Any, HTTPResponse]]
OPEN_PATHS = ("/console/login", "/console/static/console.css")


def console_blueprint() -> Blueprint:
    bp = Blueprint("console", url_prefix="/console", strict_slashes=False)

    @bp.on_request
    async def guard(request: Request) -> HTTPResponse | None:
        ctx = gateway_of(request)
        token = ctx.config.admin.token
        request.ctx.console_session = None
        if token is None:
            return response.text("Not Found", status=404)
        if request.path in OPEN_PATHS:
            return None
        session = sessions.read_cookie(token, request.cookies.get(sessions.COOKIE), ctx.clock.now())
        try:
            if session is not None and await sessions.is_revoked(ctx.open_store(), session):
                session = None
        except StoreError as e:
            return page(request, "error.html", 503, title="Store unavailable", detail=str(e))
        if session is None:
            if request.method in ("GET", "HEAD"):
                target = request.path + (f"?{request.query_string}" if request.query_string else "")
                return response.redirect(
                    f"/console/login?next={quote(target, safe='')}", status=303
                )
            return page(
                request,
                "error.html",
                403,
                title="Log in first",
                detail="Your session has ended; nothing was changed.",
            )
        request.ctx.console_session = session
        if request.method == "POST" and not session.csrf_ok(token, form_of(request).get("csrf")):
            return page(
                request,
                "error.html",
                403,
                title="Refused",
                detail="The form's security token is missing or stale; nothing was"
                " changed. Reload the page and try again.",
            )
        return None

    def route(path: str, methods: tuple[str, ...] = ("GET",)) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            bp.add_route(
                guarded(fn),
                path,
                methods=list(methods),
                name=fn.__name__,
                strict_slashes=path == "/",
            )
            return fn

        return register

    async def to_overview(request: Request) -> HTTPResponse:
        return response.redirect("/console/", status=308)

    bp.add_route(to_overview, "", methods=["GET"], name="to_overview", strict_slashes=True)

    bp.add_route(guarded(login), "/login", methods=["GET", "POST"], name="login")
    bp.add_route(guarded(logout), "/logout", methods=["POST"], name="logout")
    bp.add_route(stylesheet, "/static/console.css", methods=["GET"], name="stylesheet")
    route("/")(pages.overview)
    route("/search")(pages.search)
    route("/messages/<message_uuid:str>")(pages.message)
    route("/events/<event_id:str>")(pages.event)
    route("/deliveries")(deliveries.listing)
    route("/deliveries/replay", ("POST",))(deliveries.replay)
    route("/deliveries/<delivery_id:str>")(deliveries.show)
    route("/quarantine")(repair.quarantine)
    route("/quarantine/replay", ("POST",))(repair.replay_quarantined)
    route("/destinations")(repair.destinations)
    route("/destinations/<name:str>/<action:pause|resume>", ("POST",))(repair.pause_resume)
    route("/tester", ("GET", "POST"))(tester.tester)
    return bp


def guarded(fn: Handler) -> Handler:
    """User errors render as a 400 page, an unreachable store as a 503 page."""

    @functools.wraps(fn)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        try:
            return await fn(request, *args, **kwargs)
        except ValueError as e:
            return page(request, "error.html", 400, title="Cannot do that", detail=str(e))
        except StoreError as e:
            return page(request, "error.html", 503, title="Store unavailable", detail=str(e))

    return wrapper


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (no open redirect)."""
    if (
        target
        and target.startswith("/console/")
        and not urlsplit(target).netloc
        and not target.startswith("//")
    ):
        return target
    return "/console/"


async def login(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    token = ctx.config.admin.token
    if token is None:  # the guard answers 404 first; kept for the type checker
        return response.text("Not Found", status=404)
    now = ctx.clock.now()
    next_path = _safe_next(request.args.get("next") or form_of(request).get("next"))
    if request.method == "GET":
        session = sessions.read_cookie(token, request.cookies.get(sessions.COOKIE), now)
        if session is not None and not await sessions.is_revoked(ctx.open_store(), session):
            return response.redirect(next_path, status=303)
        return page(request, "login.html", next_path=next_path, failed=False)
    guard: AdminGuard = request.app.ctx.admin_guard
    admin = ctx.config.admin
    addr = guard.address(request, ctx.config.server.trusted_proxies)
    wait = guard.retry_after(admin, addr, now)
    if wait is not None:
        out = page(request, "login.html", 429, next_path=next_path, failed=False, wait=wait)
        out.headers["Retry-After"] = str(wait)
        return out
    given = form_of(request).get("token")
    if not sessions.token_ok(token, given):
        log.warning("console: a login with a wrong token from %s", addr)
        if given:  # an empty field is not a guess
            guard.failed(admin, addr, now, "console login")
        return page(request, "login.html", 401, next_path=next_path, failed=True)
    guard.succeeded(admin, addr)
    ttl = ctx.config.admin.session_ttl
    _, value = sessions.new_session(token, now, ttl)
    out = response.redirect(next_path, status=303)
    secure = bool(ctx.config.admin.secure_cookie) or request.scheme == "https"
    out.add_cookie(
        sessions.COOKIE,
        value,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=secure,
        max_age=int(ttl),
    )
    return out


async def logout(request: Request) -> HTTPResponse:
    ctx = gateway_of(request)
    session = request.ctx.console_session
    if session is not None:
        await sessions.revoke(ctx.open_store(), session, ctx.clock.now())
    out = response.redirect("/console/login", status=303)
    out.delete_cookie(sessions.COOKIE, path="/console")
    return out


@functools.cache
def _css() -> bytes:
    return resources.files("gateway.console").joinpath("static/console.css").read_bytes()


async def stylesheet(request: Request) -> HTTPResponse:
    if gateway_of(request).config.admin.token is None:
        return response.text("Not Found", status=404)
    return response.raw(
        _css(), content_type="text/css; charset=utf-8", headers={"Cache-Control": "max-age=300"}
    )
