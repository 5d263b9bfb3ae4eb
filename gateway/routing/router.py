"""The router: takes committed events, runs the plugin chain, creates deliveries.

Runs as a background task in every gateway process; events are claimed with a lease, so several
processes share the work and a crashed router's events are taken again when the lease expires.
An event whose chain raised stays ``received`` with the plugin's name and error as its reason
and is tried again with backoff (1s doubling up to 5 minutes).

Fresh events do not make a round trip through the store: intake commits them already leased
to this process (`lease_for_intake`) and hands them over with their parsed JSON (`take`), so
the router neither claims nor re-reads them. The store remains the source of truth: held
events, events another process leased and lost, and anything beyond `MAX_FRESH` waiting in
memory are claimed from it as before. A batch's verdicts are committed together
(`Store.finish_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import PluginError, StoreError
from gateway.intake.body import BodyError, parse_element
from gateway.ops.metrics import Metrics
from gateway.routing.eager import gather_eager
from gateway.store import EventRecord, FinishedEvent, Lease, NewDelivery, Store
from gateway.store.sqlite import new_delivery_id

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config.loaded import Loaded
    from gateway.routing.chain import Chain

log = logging.getLogger("gateway.routing.router")

BATCH = 256
MAX_HOLD = 300.0
#: Fresh events waiting in memory at most; past this, intake commits events unleased and the
#: router claims them from the store, so a backlog lives on disk, not in memory.
MAX_FRESH = 4096
#: A fresh event is routed from memory only while this much of its lease is left; otherwise it
#: is left to expire and be claimed from the store (never routed twice at the same time).
LEASE_MARGIN = 0.5
#: Seconds between looks at the store for due events when nothing says sooner.
POLL = 5.0
#: The same when the store announces events other processes commit unleased (``Store.watch``).
POLL_WATCHED = 15.0


def hold_delay(route_attempts: int) -> float:
    """Seconds before an event whose chain failed `route_attempts` times is tried again."""
    return min(MAX_HOLD, 2.0 ** min(route_attempts, 16))


class Router:
    """See the module docstring. `on_routed(destinations)` is called after deliveries exist."""

    def __init__(
        self,
        loaded: Loaded,
        store: Store,
        chain: Chain,
        clock: Clock,
        owner: str,
        on_routed: Callable[[set[str]], None] = lambda destinations: None,
        metrics: Metrics | None = None,
    ) -> None:
        self.loaded = loaded
        self.store = store
        self.chain = chain
        self.clock = clock
        self.owner = owner
        self.on_routed = on_routed
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: (event, its parsed element, lease expiry), as handed over by intake.
        self._fresh: deque[tuple[EventRecord, Any, float]] = deque()
        #: When the store may next hold due events for a claim (0: look now).
        self._next_claim = 0.0
        #: Seconds between looks at the store when nothing says sooner (`POLL`).
        self.poll = POLL
        #: Waiting for work: nothing in memory, and the last claim found no full batch.
        self.idle = False
        #: Whether this router claims events from the store; False: it routes only what intake
        #: hands over (a serving process whose delivery processes claim the rest).
        self.claims = True
        #: Fresh events held in memory at most; intake commits the rest unleased.
        self.max_fresh = MAX_FRESH

    def wake(self) -> None:
        """The store has new work for the router (a replay, events committed unleased)."""
        self._next_claim = 0.0
        self._wake.set()

    def lease_for_intake(self) -> Lease | None:
        """The lease intake should commit fresh events with, or None when they should go to
        the store unleased (the router is not running, or enough are waiting in memory)."""
        if self._task is None or self._stopping or len(self._fresh) >= self.max_fresh:
            return None
        return Lease(self.owner, self.clock.now() + self.loaded.config.delivery.lease)

    def take(self, events: list[tuple[EventRecord, Any]], lease: Lease) -> None:
        """Route `events` (committed with `lease`, see `lease_for_intake`) from memory."""
        for event, element in events:
            self._fresh.append((event, element, lease.until))
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="router")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the loop, then route what intake handed over and is still in memory (within
        `grace` seconds; what is left is claimed from the store when its lease expires)."""
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(grace):
                if self._task is not None:
                    # Let the batch in progress commit its verdicts: cancelled mid-way, its
                    # events would wait out their lease before anyone routed them.
                    await asyncio.shield(self._task)
                while self._fresh:
                    await self._route_fresh()
        except (TimeoutError, StoreError) as e:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            log.warning("router: %d fresh event(s) left to their lease: %s", len(self._fresh), e)

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                busy = await self.route_due()
            except StoreError as e:
                log.error("router: store unavailable, retrying: %s", e)
                busy = False
            except Exception:
                log.exception("router: unexpected error, retrying")
                busy = False
            if busy:
                continue
            await self._idle()

    async def _idle(self) -> None:
        if self._stopping:
            return
        now = self.clock.now()
        if not self.claims:  # woken by intake only
            self._next_claim = now + self.poll
        elif now >= self._next_claim:
            # Ask the store when its next event falls due (a held event's retry, a lease
            # expiring); look again within 5 s whatever it says, for other processes' work.
            try:
                due = await self.store.has_due_events(now)
            except StoreError:
                due = None
            poll = self.poll
            self._next_claim = now + poll if due is None else min(now + poll, max(now, due))
        self.idle = True
        try:
            with contextlib.suppress(TimeoutError):
                wait = max(0.0, self._next_claim - now)
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
        finally:
            self.idle = False

    async def route_due(self) -> bool:
        """Route one batch of the fresh events in memory, and claim and route due events from
        the store when some may be due. True when more may be waiting."""
        if self._fresh:
            await self._route_fresh()
        if not self.claims:
            return bool(self._fresh)
        now = self.clock.now()
        if now < self._next_claim:
            return bool(self._fresh)
        # The same lease as deliveries: how long a crashed process's work waits for another.
        lease = self.loaded.config.delivery.lease
        events = await self.store.claim_events(self.owner, BATCH, lease, now)
        await self._route_batch([(e, None) for e in events])
        self._next_claim = now  # until _idle asks the store when the next one is due
        return bool(self._fresh) or len(events) == BATCH

    async def _route_fresh(self) -> None:
        # Only events with time left on their lease: an older one may be claimed by another
        # process any moment, and is left to the store's claim path instead.
        fresh_until = self.clock.now() + LEASE_MARGIN
        batch: list[tuple[EventRecord, Any]] = []
        while self._fresh and len(batch) < BATCH:
            event, element, until = self._fresh.popleft()
            if until > fresh_until:
                batch.append((event, element))
        await self._route_batch(batch)

    async def _route_batch(self, events: list[tuple[EventRecord, Any]]) -> None:
        # Chains run concurrently (a plugin may wait on I/O), each started at once without a task
        # until it waits (`gather_eager`); the store's marks are atomic, so
        # plugins keeping state (the ordering filter) stay correct. The verdicts are committed
        # together: one store write for the batch.
        results = await gather_eager(self._decide(e, element) for e, element in events)
        finished: list[FinishedEvent] = []
        sources: list[str] = []
        for (event, _), result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                # Its lease expires and it is routed again; the rest of the batch is done.
                log.error(
                    "event=%s: routing failed: %s: %s", event.id, type(result).__name__, result
                )
            elif result is not None:
                finished.append(result)
                sources.append(event.source)
        if not finished:
            return
        await self.store.finish_events(finished)
        touched: set[str] = set()
        for f, source in zip(finished, sources, strict=True):
            touched.update(d.destination for d in f.deliveries)
            self._count_state(source, f.state)
        if touched:
            self.on_routed(touched)

    async def _decide(self, event: EventRecord, element: Any) -> FinishedEvent | None:
        """Run the chain on one event. None when the event was held or quarantined (already
        written); otherwise its verdict, for the caller to commit."""
        now = self.clock.now()
        repeated: list[str] = []
        if element is None:
            try:
                element, repeated = parse_element(event.raw)
            except BodyError as e:  # only events stored before intake was strict JSON
                await self.store.quarantine_event(event.id, f"stored body is not JSON: {e}", now)
                return None
        if event.recheck and (problems := repeated + self._recheck(event, element)):
            await self.store.quarantine_event(event.id, "; ".join(problems), now)
            self._count_state(event.source, "quarantined")
            return None
        meta: dict[str, Any] = {
            "event_id": event.id,
            "source": event.source,
            "received_at": event.received_at,
        }
        try:
            decision = await self.chain.evaluate(element, meta)
        except PluginError as e:
            retry_at = now + hold_delay(event.route_attempts)
            log.error("event=%s held: %s (next try in %.0fs)", event.id, e, retry_at - now)
            await self.store.hold_event(event.id, str(e), retry_at, now)
            self._next_claim = min(self._next_claim, retry_at)
            self._count_state(event.source, "held")
            return None
        deliveries = [
            NewDelivery(new_delivery_id(now), event.id, t.route, t.destination, now, t.enrichment)
            for t in decision.targets
        ]
        return FinishedEvent(event.id, decision.state, deliveries, now, decision.reason)

    def _count_state(self, source: str, state: str) -> None:
        if self.metrics is None:
            return
        self.metrics.count("events", (source, state))

    def _recheck(self, event: EventRecord, element: Any) -> list[str]:
        """Today's format check for an event replayed from quarantine."""
        source = self.loaded.config.sources.get(event.source)
        if source is None:
            return [f"source {event.source!r} is no longer configured"]
        fmt = self.loaded.registry.get("source_formats", source.format)
        return list(fmt(self.loaded.source_options.get(event.source)).check(element))
