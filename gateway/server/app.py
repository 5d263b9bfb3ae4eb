"""The Sanic application factory: HTTP in front of a `gateway.runtime.Gateway`.

Nothing happens at import. `create_app(loaded)` builds routes and a `Gateway`
(``app.ctx.gateway``); the store, the shared HTTP client and the first `Runtime` are opened in
the ``before_server_start`` listener of each worker process, plugin ``startup`` hooks run after
them, and everything is released when the process stops. Background loops run in every worker
process; leases in the store make that safe.

Source paths are dispatched from the current runtime's endpoint table rather than registered as
routes, so a configuration reload can add, remove or change sources without restarting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket

from sanic import Request, Sanic, response
from sanic.exceptions import RequestCancelled, SanicException
from sanic.response import HTTPResponse

from gateway.clock import Clock, SystemClock
from gateway.config.loaded import Loaded
from gateway.console import console_blueprint
from gateway.console.guard import AdminGuard
from gateway.errors import StoreError
from gateway.intake.responses import SANIC_CODES, error
from gateway.ops.metrics import CONTENT_TYPE_LATEST
from gateway.plugin.hooks import call_hook
from gateway.runtime import Gateway
from gateway.server import limits
from gateway.server.admin_api import admin_blueprint
from gateway.server.closing import CONNECTIONS_GRACE, Closing
from gateway.store import store_from_url

log = logging.getLogger("gateway")
_names = itertools.count()

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def create_app(
    loaded: Loaded,
    *,
    clock: Clock | None = None,
    background: bool = True,
    deliver: bool = True,
    route: bool = True,
) -> Sanic:
    """A Sanic app serving `loaded`'s sources. `background=False` runs intake only (tests);
    `deliver=False` routes but delivers nothing (``run --role intake``); `route=False` routes
    only what it keeps up with and leaves the rest and the delivery to ``delivery.processes``
    children (see `gateway.runtime.Gateway.role`)."""
    config = loaded.config
    app = Sanic(f"callback_gateway_{next(_names)}", configure_logging=False)
    app.config.REQUEST_MAX_SIZE = config.server.max_body_size
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    limits.configure(app, config.server)
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = CONNECTIONS_GRACE
    app.ctx.closing = Closing()
    app.register_middleware(app.ctx.closing.on_request, "request")
    owner = f"{socket.gethostname()}:{os.getpid()}"
    role = "all" if deliver else "intake" if route else "serve"
    app.ctx.gateway = Gateway(loaded, clock or SystemClock(), owner, background, role)
    app.ctx.delivery_supervisor = None
    app.ctx.admin_guard = AdminGuard()

    app.add_route(_healthz, "/healthz", methods=["GET"], name="healthz")
    app.add_route(_readyz, "/readyz", methods=["GET"], name="readyz")
    app.add_route(_metrics, "/metrics", methods=["GET"], name="metrics")
    app.blueprint(admin_blueprint())
    app.blueprint(console_blueprint())
    app.add_route(_dispatch, "/<path:path>", methods=ALL_METHODS, name="sources")
    app.error_handler.add(SanicException, _sanic_error)
    app.register_listener(_start, "before_server_start")
    app.register_listener(_drain, "before_server_stop")
    app.register_listener(_stop, "after_server_stop")
    return app


async def _dispatch(request: Request, path: str) -> HTTPResponse:
    gw: Gateway = request.app.ctx.gateway
    endpoint = gw.endpoints.get(request.path)
    if endpoint is None:
        return error(404, "not_found", f"no source at {request.path}")
    if request.method != "POST":
        return error(
            405, "method_not_allowed", f"{request.path} accepts POST only", {"Allow": "POST"}
        )
    return await endpoint.handle(request)


async def _healthz(request: Request) -> HTTPResponse:
    return response.json({"status": "ok"})


async def _readyz(request: Request) -> HTTPResponse:
    gw: Gateway = request.app.ctx.gateway
    try:
        await gw.open_store().ping()
    except StoreError as e:
        return error(503, "not_ready", f"store unavailable: {e}")
    sources = sorted(e.name for e in gw.endpoints.values())
    return response.json({"status": "ready", "sources": sources})


async def _metrics(request: Request) -> HTTPResponse:
    gw: Gateway = request.app.ctx.gateway
    try:
        body = await gw.metrics.render()
    except StoreError as e:
        return error(503, "store_unavailable", f"cannot read queue state: {e}")
    return response.raw(body, content_type=CONTENT_TYPE_LATEST)


async def _sanic_error(request: Request, exception: SanicException) -> HTTPResponse:
    status = getattr(exception, "status_code", 500) or 500
    code = SANIC_CODES.get(status, "error")
    detail = str(exception) if status < 500 else "internal error"
    if status == 413:
        limit = request.app.config.REQUEST_MAX_SIZE
        detail = f"the body exceeds server.max_body_size ({limit} bytes)"
    endpoint = request.app.ctx.gateway.endpoints.get(request.path)
    if endpoint is not None and request.method == "POST":
        endpoint.refused(request, status, code)
    elif status >= 500 and not isinstance(exception, RequestCancelled):
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exception)
    elif status in (408, 431):
        log.warning("status=%d error=%s client=%s", status, code, limits.peer(request))
    return error(status, code, detail, getattr(exception, "headers", None) or None)


async def _start(app: Sanic) -> None:
    gw: Gateway = app.ctx.gateway
    await gw.open(store_from_url(gw.config.store))  # relative to the working directory
    await call_hook(gw.loaded.pm.hook.startup, gateway=gw)
    if gw.background and app.state.workers == 1:
        from gateway.server.reload import reload_logged

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_logged(app)))


async def _drain(app: Sanic) -> None:
    """Before the server stops: stop routing, let in-flight deliveries finish or release them."""
    app.ctx.closing.begin()  # first: no request is taken from here on
    gw: Gateway = app.ctx.gateway
    await gw.drain()


async def _stop(app: Sanic) -> None:
    gw: Gateway = app.ctx.gateway
    try:
        await call_hook(gw.loaded.pm.hook.shutdown, gateway=gw)
    except Exception:
        log.exception("a shutdown hook failed")
    await gw.close()
