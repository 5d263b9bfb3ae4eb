"""The router: takes committed events, runs the plugin chain, creates deliveries.

Runs as a background task in every gateway process; events are claimed with a lease, so several
processes share the work and a crashed router's events are taken again when the lease expires.
An event whose chain raised stays ``received`` with the plugin's name and error as its reason
and is tried again with backoff (1s doubling up to 5 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import PluginError, StoreError
from gateway.metrics import Metrics
from gateway.store import EventRecord, NewDelivery, Store
from gateway.store.sqlite import new_delivery_id

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config.load import Loaded
    from gateway.routing.chain import Chain

log = logging.getLogger("gateway.router")

BATCH = 256
MAX_HOLD = 300.0


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

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="router")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
        now = self.clock.now()
        try:
            due = await self.store.has_due_events(now)
        except StoreError:
            due = None
        timeout = 5.0 if due is None else min(5.0, max(0.0, due - now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def route_due(self) -> bool:
        """Route one batch of due events; True when a full batch was taken (more may wait)."""
        # The same lease as deliveries: how long a crashed process's work waits for another.
        lease = self.loaded.config.delivery.lease
        events = await self.store.claim_events(self.owner, BATCH, lease, self.clock.now())
        # Concurrently, so that the batch's store writes share group commits instead of
        # paying one commit each. The store's marks are atomic, so plugins keeping state
        # (the ordering filter) stay correct.
        touched: set[str] = set()
        results = await asyncio.gather(*(self.route_one(e) for e in events), return_exceptions=True)
        for event, result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                # Its lease expires and it is routed again; the rest of the batch is done.
                log.error(
                    "event=%s: routing failed: %s: %s", event.id, type(result).__name__, result
                )
            else:
                touched |= result
        if touched:
            self.on_routed(touched)
        return len(events) == BATCH

    async def route_one(self, event: EventRecord) -> set[str]:
        """Route one claimed event; returns the destinations that got new deliveries."""
        now = self.clock.now()
        try:
            element = json.loads(event.raw)
        except ValueError as e:  # cannot happen for stored events, but never loop on one
            await self.store.quarantine_event(event.id, f"stored body is not JSON: {e}", now)
            return set()
        if event.recheck and (problems := self._recheck(event, element)):
            await self.store.quarantine_event(event.id, "; ".join(problems), now)
            self._count(event, "quarantined")
            return set()
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
            self._count(event, "held")
            return set()
        destinations = self.loaded.config.destinations
        targets = [t for t in decision.targets if destinations[t.destination].enabled]
        state, reason = decision.state, decision.reason
        if decision.targets and not targets:
            skipped = sorted({t.destination for t in decision.targets})
            state = "unmatched"
            reason = f"matching routes lead only to disabled destinations: {', '.join(skipped)}"
        deliveries = [
            NewDelivery(new_delivery_id(now), event.id, t.route, t.destination, now, t.enrichment)
            for t in targets
        ]
        await self.store.finish_event(event.id, state, deliveries, now, reason)
        self._count(event, state)
        return {d.destination for d in deliveries}

    def _count(self, event: EventRecord, state: str) -> None:
        if self.metrics is not None:
            self.metrics.events.labels(event.source, state).inc()

    def _recheck(self, event: EventRecord, element: Any) -> list[str]:
        """Today's format check for an event replayed from quarantine."""
        source = self.loaded.config.sources.get(event.source)
        if source is None:
            return [f"source {event.source!r} is no longer configured"]
        fmt = self.loaded.registry.get("source_formats", source.format)
        return list(fmt(self.loaded.source_options.get(event.source)).check(element))
