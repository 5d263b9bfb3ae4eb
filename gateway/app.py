"""The Sanic application factory and the per-process runtime it manages.

Nothing happens at import. `create_app(loaded)` builds routes; resources (store, shared HTTP
client, router, delivery engine, plugin startup hooks) are created in the ``before_server_start``
listener of each worker process and released in ``after_server_stop``. Background loops run in
every worker process; leases in the store make that safe.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from sanic import Request, Sanic, response
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from gateway.clock import Clock, SystemClock
from gateway.config.load import Loaded
from gateway.errors import StoreError
from gateway.housekeeping import Housekeeper
from gateway.http_errors import SANIC_CODES, error
from gateway.intake import SourceEndpoint
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.pluginmanager import call_each
from gateway.store import IngestResult, Store, store_from_url

log = logging.getLogger("gateway")
_names = itertools.count()

#: Seconds SIGTERM waits for in-flight delivery attempts before releasing them.
SHUTDOWN_GRACE = 10.0


@dataclass
class GatewayContext:
    """Everything one gateway process runs on; passed to ``startup``/``shutdown`` hooks."""

    loaded: Loaded
    clock: Clock
    owner: str
    background: bool = True
    store: Store | None = None
    http: Any = None
    router: Any = None
    engine: Any = None
    housekeeper: Any = None
    metrics: Metrics = field(default_factory=Metrics)
    endpoints: dict[str, SourceEndpoint] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.loaded.config

    def committed(self, source: str, result: IngestResult) -> None:
        """Intake calls this after a commit: wake the router when there is work."""
        if result.accepted and self.router is not None:
            self.router.wake()


def create_app(loaded: Loaded, *, clock: Clock | None = None, background: bool = True) -> Sanic:
    """A Sanic app serving `loaded`'s sources. `background=False` runs intake only (tests)."""
    config = loaded.config
    app = Sanic(f"callback_gateway_{next(_names)}", configure_logging=False)
    app.config.REQUEST_MAX_SIZE = config.server.max_body_size
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.KEEP_ALIVE_TIMEOUT = 75
    owner = f"{socket.gethostname()}:{os.getpid()}"
    ctx = GatewayContext(loaded, clock or SystemClock(), owner, background)
    app.ctx.gateway = ctx

    for name, source in config.sources.items():
        fmt_cls = loaded.registry.get("source_formats", source.format)
        endpoint = SourceEndpoint(
            name,
            source,
            fmt_cls(loaded.source_options.get(name)),
            lambda: _store(ctx),
            ctx.clock,
            config.server.trusted_proxies,
            ctx.committed,
            ctx.metrics,
        )
        ctx.endpoints[name] = endpoint
        app.add_route(endpoint.handle, source.path, methods=["POST"], name=f"source_{name}")

    app.add_route(_healthz, "/healthz", methods=["GET"], name="healthz")
    app.add_route(_readyz, "/readyz", methods=["GET"], name="readyz")
    app.add_route(_metrics, "/metrics", methods=["GET"], name="metrics")
    app.error_handler.add(SanicException, _sanic_error)
    app.register_listener(_start, "before_server_start")
    app.register_listener(_drain, "before_server_stop")
    app.register_listener(_stop, "after_server_stop")
    return app


def _store(ctx: GatewayContext) -> Store:
    if ctx.store is None:
        raise StoreError("the store is not open yet")
    return ctx.store


async def _healthz(request: Request) -> HTTPResponse:
    return response.json({"status": "ok"})


async def _readyz(request: Request) -> HTTPResponse:
    ctx: GatewayContext = request.app.ctx.gateway
    try:
        await _store(ctx).ping()
    except StoreError as e:
        return error(503, "not_ready", f"store unavailable: {e}")
    return response.json({"status": "ready", "sources": sorted(ctx.endpoints)})


async def _metrics(request: Request) -> HTTPResponse:
    ctx: GatewayContext = request.app.ctx.gateway
    try:
        body = await ctx.metrics.render()
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
    if status >= 500:
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exception)
    return error(status, code, detail, getattr(exception, "headers", None) or None)


async def _start(app: Sanic) -> None:
    ctx: GatewayContext = app.ctx.gateway
    loaded = ctx.loaded
    ctx.store = store_from_url(loaded.config.store)  # relative to the working directory
    await ctx.store.open()
    ctx.metrics.watch_store(ctx.store, ctx.clock)
    if ctx.background:
        await _start_background(ctx)
    await call_each(loaded.pm.hook.startup, gateway=ctx)


async def _start_background(ctx: GatewayContext) -> None:
    from gateway.delivery.engine import DeliveryEngine
    from gateway.delivery.http import make_http_client
    from gateway.destination import Services
    from gateway.router import Router
    from gateway.routing.chain import Chain

    assert ctx.store is not None
    ctx.http = make_http_client()
    services = Services(ctx.http, ctx.clock, ctx.store, ctx.loaded.secrets)
    ctx.engine = DeliveryEngine(
        ctx.loaded, ctx.store, services, ctx.clock, ctx.owner, ctx.loaded.pm
    )
    chain = Chain(ctx.loaded, ctx.store, ctx.clock)
    ctx.router = Router(
        ctx.loaded, ctx.store, chain, ctx.clock, ctx.owner, _wake_engine(ctx), ctx.metrics
    )
    ctx.housekeeper = Housekeeper(ctx.store, ctx.loaded.config.retention, ctx.clock)
    await ctx.engine.start()
    await ctx.router.start()
    await ctx.housekeeper.start()


def _wake_engine(ctx: GatewayContext) -> Any:
    def wake(destinations: set[str]) -> None:
        for name in destinations:
            ctx.engine.wake(name)

    return wake


async def _drain(app: Sanic) -> None:
    """Before the server stops: stop routing, let in-flight deliveries finish or release them."""
    ctx: GatewayContext = app.ctx.gateway
    if ctx.housekeeper is not None:
        await ctx.housekeeper.stop()
    if ctx.router is not None:
        await ctx.router.stop()
    if ctx.engine is not None:
        await ctx.engine.stop(SHUTDOWN_GRACE)


async def _stop(app: Sanic) -> None:
    ctx: GatewayContext = app.ctx.gateway
    try:
        await call_each(ctx.loaded.pm.hook.shutdown, gateway=ctx)
    except Exception:
        log.exception("a shutdown hook failed")
    if ctx.http is not None:
        await ctx.http.aclose()
    if ctx.store is not None:
        await ctx.store.close()
