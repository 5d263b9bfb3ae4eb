"""The Sanic application factory and the per-process runtime it manages.

Nothing happens at import. `create_app(loaded)` builds routes; resources (store, shared HTTP
client, router, delivery engine, housekeeping, silence alarm, plugin startup hooks) are created
in the ``before_server_start`` listener of each worker process and released when it stops.
Background loops run in every worker process; leases in the store make that safe.

Source paths are dispatched from a table rather than registered as routes, so a configuration
reload can add, remove or change sources without restarting the server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from sanic import Request, Sanic, response
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse

from gateway.clock import Clock, SystemClock
from gateway.config.load import Loaded
from gateway.errors import StoreError
from gateway.intake.endpoint import SourceEndpoint
from gateway.intake.responses import SANIC_CODES, error
from gateway.ops.housekeeping import Housekeeper
from gateway.ops.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.plugin.manager import call_each
from gateway.server.admin_api import admin_blueprint
from gateway.store import EventRecord, IngestResult, Lease, Store, store_from_url

log = logging.getLogger("gateway")
_names = itertools.count()

#: Seconds SIGTERM waits for in-flight delivery attempts before releasing them.
SHUTDOWN_GRACE = 10.0
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


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
    silence: Any = None
    metrics: Metrics = field(default_factory=Metrics)
    #: Source path -> endpoint; replaced as a whole on reload.
    paths: dict[str, SourceEndpoint] = field(default_factory=dict)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def config(self) -> Any:
        return self.loaded.config

    def intake_lease(self) -> Lease | None:
        """The lease intake commits fresh events with, so this process's router can take them
        from memory (None: commit them unleased for any router to claim)."""
        return self.router.lease_for_intake() if self.router is not None else None

    def committed(
        self,
        source: str,
        result: IngestResult,
        fresh: list[tuple[EventRecord, Any]],
        lease: Lease | None,
    ) -> None:
        """Intake calls this after a commit: hand the fresh events to the router (or wake it
        to claim them), note the source is alive."""
        if self.router is not None:
            if fresh and lease is not None:
                self.router.take(fresh, lease)
            elif result.accepted:
                self.router.wake()
        if self.silence is not None:
            self.silence.seen(source, self.clock.now())

    def build_endpoints(self) -> None:
        """(Re)build the source table from the current configuration."""
        loaded, config = self.loaded, self.loaded.config
        paths = {}
        for name, source in config.sources.items():
            fmt_cls = loaded.registry.get("source_formats", source.format)
            paths[source.path] = SourceEndpoint(
                name,
                source,
                fmt_cls(loaded.source_options.get(name)),
                self._store,
                self.clock,
                config.server.trusted_proxies,
                self,
                self.metrics,
            )
        self.paths = paths

    def _store(self) -> Store:
        if self.store is None:
            raise StoreError("the store is not open yet")
        return self.store


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
    ctx.build_endpoints()
    app.ctx.gateway = ctx

    app.add_route(_healthz, "/healthz", methods=["GET"], name="healthz")
    app.add_route(_readyz, "/readyz", methods=["GET"], name="readyz")
    app.add_route(_metrics, "/metrics", methods=["GET"], name="metrics")
    app.blueprint(admin_blueprint())
    app.add_route(_dispatch, "/<path:path>", methods=ALL_METHODS, name="sources")
    app.error_handler.add(SanicException, _sanic_error)
    app.register_listener(_start, "before_server_start")
    app.register_listener(_drain, "before_server_stop")
    app.register_listener(_stop, "after_server_stop")
    return app


async def _dispatch(request: Request, path: str) -> HTTPResponse:
    ctx: GatewayContext = request.app.ctx.gateway
    endpoint = ctx.paths.get(request.path)
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
    ctx: GatewayContext = request.app.ctx.gateway
    try:
        await ctx._store().ping()
    except StoreError as e:
        return error(503, "not_ready", f"store unavailable: {e}")
    return response.json({"status": "ready", "sources": sorted(e.name for e in ctx.paths.values())})


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
    ctx.store = store_from_url(ctx.config.store)  # relative to the working directory
    await ctx.store.open()
    ctx.metrics.watch_store(ctx.store, ctx.clock)
    if ctx.background:
        await start_background(ctx)
    await call_each(ctx.loaded.pm.hook.startup, gateway=ctx)
    if ctx.background and app.state.workers == 1:
        from gateway.server.reload import reload_logged

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_logged(app)))


async def start_background(ctx: GatewayContext) -> None:
    """Start the router, delivery engine, housekeeping and silence alarm for `ctx.loaded`."""
    from gateway.destination.http import make_http_client
    from gateway.ops.silence import SilenceWatcher
    from gateway.routing.chain import Chain
    from gateway.routing.router import Router

    assert ctx.store is not None
    ctx.http = make_http_client()
    ctx.engine = make_engine(ctx)
    chain = Chain(ctx.loaded, ctx.store, ctx.clock)
    ctx.router = Router(
        ctx.loaded, ctx.store, chain, ctx.clock, ctx.owner, _wake_engine(ctx), ctx.metrics
    )
    ctx.housekeeper = Housekeeper(ctx.store, ctx.config.retention, ctx.clock)
    expect = {n: s.expect_within for n, s in ctx.config.sources.items() if s.expect_within}
    ctx.silence = SilenceWatcher(ctx.store, ctx.clock, expect)
    await ctx.engine.start()
    await ctx.router.start()
    await ctx.housekeeper.start()
    await ctx.silence.start()


def make_engine(ctx: GatewayContext) -> Any:
    from gateway.delivery.engine import DeliveryEngine
    from gateway.destination.base import Services

    assert ctx.store is not None
    services = Services(ctx.http, ctx.clock, ctx.store, ctx.loaded.secrets)
    engine = DeliveryEngine(ctx.loaded, ctx.store, services, ctx.clock, ctx.owner, ctx.loaded.pm)
    engine.metrics = ctx.metrics
    return engine


def _wake_engine(ctx: GatewayContext) -> Any:
    def wake(destinations: set[str]) -> None:
        for name in destinations:
            ctx.engine.wake(name)

    return wake


async def _drain(app: Sanic) -> None:
    """Before the server stops: stop routing, let in-flight deliveries finish or release them."""
    ctx: GatewayContext = app.ctx.gateway
    for part in (ctx.silence, ctx.housekeeper, ctx.router):
        if part is not None:
            await part.stop()
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
