"""The typed runtime: what one gateway process runs on, and what one configuration builds.

Two objects, each with one owner:

- `Gateway` lives as long as the process serves. It owns the resources that outlive a reload
  (the store, the one shared outbound HTTP client, the clock, the metrics, the owner id used in
  leases) and the *current* `Runtime`. It is what ``startup``/``shutdown`` hooks receive, and
  what intake hands committed events to (`Gateway.intake_lease`, `Gateway.committed`: always
  the current runtime's router, so a request that began before a reload is routed by the
  runtime serving when it commits).
- `Runtime` is built from one loaded configuration and holds its per-config parts: the source
  endpoints (path -> `SourceEndpoint`), the plugin chain, the router, the delivery engine, the
  silence watcher and the housekeeper. Building one validates what only construction can
  (components whose constructors reject their options). `Gateway.swap` builds a new runtime,
  starts it, makes it current in one step, and stops the old one's parts (in-flight deliveries
  get the reload grace).

Nothing here is patched from outside: a reload replaces the runtime as a whole. No stage imports
this module; the server and the CLI do.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gateway.clock import Clock
from gateway.delivery.dispatcher import POLL_WATCHED as ENGINE_POLL_WATCHED
from gateway.delivery.engine import DeliveryEngine
from gateway.destination.base import Services
from gateway.errors import StoreError
from gateway.intake.endpoint import SourceEndpoint
from gateway.ops.housekeeping import Housekeeper
from gateway.ops.metrics import Metrics
from gateway.ops.silence import SilenceWatcher
from gateway.routing.chain import Chain
from gateway.routing.router import POLL_WATCHED as ROUTER_POLL_WATCHED
from gateway.routing.router import Router
from gateway.store import EventRecord, IngestResult, Lease, Store
from gateway.store.marks import Marks

if TYPE_CHECKING:
    import httpx

    from gateway.config.loaded import Loaded
    from gateway.config.models import Config

log = logging.getLogger("gateway")

#: Seconds SIGTERM waits for in-flight delivery attempts before releasing them.
SHUTDOWN_GRACE = 10.0
#: The roles (`Gateway.role`) that run a router, and those that deliver.
ROUTES = frozenset({"all", "intake", "serve", "delivery"})
DELIVERS = frozenset({"all", "delivery"})
#: Fresh events a serving process with delivery processes routes from memory at most; beyond
#: that intake commits them unleased and the delivery processes route them.
SERVE_FRESH = 1024
#: Seconds a reload lets the old engine's in-flight attempts finish.
RELOAD_GRACE = 30.0


class Runtime:
    """The parts one configuration runs (see the module docstring). Background parts (router,
    engine, housekeeper, silence watcher) exist only when the gateway runs them."""

    def __init__(self, loaded: Loaded, gateway: Gateway, store: Store, background: bool) -> None:
        self.loaded = loaded
        config = loaded.config
        self.chain = Chain(loaded, store, gateway.clock)
        self.endpoints: dict[str, SourceEndpoint] = {
            source.path: SourceEndpoint(
                name,
                source,
                loaded.registry.get("source_formats", source.format)(
                    loaded.source_options.get(name)
                ),
                gateway.open_store,
                gateway.clock,
                config.server.trusted_proxies,
                gateway,
                gateway.metrics,
            )
            for name, source in config.sources.items()
        }
        self.router: Router | None = None
        self.engine: DeliveryEngine | None = None
        self.housekeeper: Housekeeper | None = None
        self.silence: SilenceWatcher | None = None
        if background and gateway.role in DELIVERS:
            assert gateway.http is not None
            services = Services(
                gateway.http, gateway.clock, Marks(store, gateway.clock), loaded.secrets
            )
            self.engine = DeliveryEngine(
                loaded, store, services, gateway.clock, gateway.owner, gateway.metrics
            )
            if gateway.watched:  # the store announces other processes' work: poll less
                self.engine.poll = ENGINE_POLL_WATCHED
        if background and gateway.role in ROUTES:
            self.router = Router(
                loaded,
                store,
                self.chain,
                gateway.clock,
                gateway.owner,
                self._routed,
                gateway.metrics,
            )
            if gateway.watched:
                self.router.poll = ROUTER_POLL_WATCHED
            if gateway.role == "serve":
                self.router.claims = False
                self.router.max_fresh = SERVE_FRESH
        if background and gateway.role != "delivery":
            self.housekeeper = Housekeeper(store, config.retention, gateway.clock)
            expect = {n: s.expect_within for n, s in config.sources.items() if s.expect_within}
            self.silence = SilenceWatcher(store, gateway.clock, expect)

    @property
    def config(self) -> Config:
        return self.loaded.config

    def _routed(self, destinations: set[str]) -> None:
        if self.engine is not None:
            for name in destinations:
                self.engine.wake(name)

    async def start(self) -> None:
        """Start the background parts (engine first, so routed deliveries find it)."""
        if self.engine is not None:
            await self.engine.start()
        for part in (self.router, self.housekeeper, self.silence):
            if part is not None:
                await part.start()

    async def stop(self, grace: float) -> None:
        """Stop routing and alarms, then let in-flight deliveries finish within `grace` seconds
        (the rest are released for another worker)."""
        for part in (self.silence, self.housekeeper, self.router):
            if part is not None:
                await part.stop()
        if self.engine is not None:
            await self.engine.stop(grace)


class Gateway:
    """One serving process (see the module docstring). `open` before serving, `drain` then
    `close` when stopping."""

    def __init__(
        self, loaded: Loaded, clock: Clock, owner: str, background: bool = True, role: str = "all"
    ) -> None:
        self.loaded = loaded
        self.clock = clock
        self.owner = owner
        self.background = background
        #: ``all``: route and deliver; ``intake``: route, deliver nothing (``run --role
        #: intake``); ``serve``: intake, routing what it received from memory while it keeps up
        #: (`SERVE_FRESH`), the rest and the delivery left to its ``delivery.processes``
        #: children; ``delivery``: route what the store holds and deliver, no HTTP
        #: (`gateway.cli.delivery`). Retention and silence alarms run in every role but
        #: ``delivery``.
        self.role = role
        self.metrics = Metrics()
        self.store: Store | None = None
        self.http: httpx.AsyncClient | None = None
        self.runtime: Runtime | None = None
        #: The store announces work other processes create (``Store.watch``).
        self.watched = False
        #: Two reloads close together must not interleave (one would leave a runtime running).
        self.reload_lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self.loaded.config

    def open_store(self) -> Store:
        """The open store; `StoreError` before `open` (intake answers 503 then)."""
        if self.store is None:
            raise StoreError("the store is not open yet")
        return self.store

    @property
    def endpoints(self) -> dict[str, SourceEndpoint]:
        return self.runtime.endpoints if self.runtime is not None else {}

    async def open(self, store: Store) -> None:
        """Open `store`, create the shared HTTP client and start the first runtime."""
        from gateway.destination.http import make_http_client

        await store.open()
        if self.background:  # before anything is claimed: see Store.adopt_owner
            freed = await store.adopt_owner(self.owner, self.clock.now())
            if freed:
                log.info("resuming %d events and deliveries left by a process that died", freed)
        self.store = store
        self.watched = store.watch(self._on_work)
        self.metrics.watch_store(store, self.clock)
        if self.background:
            self.http = make_http_client()
        self.runtime = Runtime(self.loaded, self, store, self.background)
        await self.runtime.start()

    async def swap(self, loaded: Loaded, grace: float = RELOAD_GRACE) -> None:
        """Serve `loaded` from now on: build and start its runtime, make it current, stop the
        old one. Raises (nothing changed) when the new runtime cannot be built."""
        store = self.open_store()
        new = Runtime(loaded, self, store, self.background)
        await new.start()
        old, self.loaded, self.runtime = self.runtime, loaded, new
        if old is not None:
            await old.stop(grace)
        if new.router is not None:
            new.router.wake()  # events the old router left to their lease

    async def drain(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop routing and delivering (see `Runtime.stop`)."""
        if self.runtime is not None:
            await self.runtime.stop(grace)

    async def close(self) -> None:
        """Release the HTTP client and the store; add the last counts to the metrics (with
        several workers, their files outlive this process)."""
        self.metrics.flush()
        if self.http is not None:
            await self.http.aclose()
        if self.store is not None:
            await self.store.close()

    # -- what intake hands over (gateway.intake.endpoint.Handoff) ------------------------------
    def intake_lease(self) -> Lease | None:
        """The lease intake commits fresh events with, so this process's router can take them
        from memory (None: commit them unleased for any router to claim)."""
        router = self.runtime.router if self.runtime is not None else None
        return router.lease_for_intake() if router is not None else None

    def committed(
        self,
        source: str,
        result: IngestResult,
        fresh: list[tuple[EventRecord, Any]],
        lease: Lease | None,
    ) -> None:
        """After a commit: hand the fresh events to the current router (or wake it to claim
        them), and note that the source is alive."""
        runtime = self.runtime
        if runtime is None:
            return
        if runtime.router is not None:
            if fresh and lease is not None:
                runtime.router.take(fresh, lease)
            elif result.accepted:
                runtime.router.wake()
        if runtime.silence is not None:
            runtime.silence.seen(source, self.clock.now())

    def _on_work(self, kind: str, destination: str | None) -> None:
        """Another process created work (``Store.watch``): wake whoever takes it."""
        runtime = self.runtime
        if runtime is None:
            return
        if kind == "events" and runtime.router is not None:
            runtime.router.wake()
        elif kind == "deliveries" and runtime.engine is not None:
            runtime.engine.wake(destination)

    # -- what the admin API and the console ask of the running parts ---------------------------
    def wake_router(self) -> None:
        """Events were put back to be routed (a quarantine replay)."""
        if self.runtime is not None and self.runtime.router is not None:
            self.runtime.router.wake()

    def wake_engine(self) -> None:
        """Deliveries were put back in the queue (a replay)."""
        if self.runtime is not None and self.runtime.engine is not None:
            self.runtime.engine.wake()

    @property
    def engine(self) -> DeliveryEngine | None:
        return self.runtime.engine if self.runtime is not None else None
