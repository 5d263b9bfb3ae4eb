"""The delivery engine: one dispatcher per destination, claiming due deliveries under a lease.

Contract (what `gateway.server.app` relies on):

- `start()` instantiates each enabled destination once (its registered type, with the options
  ``check`` validated) and starts one dispatcher task per destination.
- A dispatcher claims due deliveries (``Store.claim_deliveries``, lease ``delivery.lease``) up to
  its free concurrency slots (``concurrency`` or ``delivery.concurrency``) and its rate-limit
  tokens, runs each try as its own task, and otherwise sleeps until ``Store.next_due``, a
  `wake()`, a freed slot, or `poll` seconds (deliveries created by another process: `POLL`,
  or `POLL_WATCHED` when the store announces them through ``Store.watch``).
  Destinations never share a dispatcher, so a slow or dead one delays no other. A 429 with
  ``Retry-After`` holds the whole destination (in this process) for that long.
- Each try: ``deliver()`` bounded by 90% of the lease (so a try never outlives its lease), the
  `RetryPolicy` decides, ``Store.finish_attempt`` records it (errors scrubbed of secrets), then
  the ``delivery_finished`` hook is called (its errors are logged and ignored).
- An outcome with ``pause_destination`` (HTTP 410) pauses the destination durably (mark
  ``paused:<name>``); paused destinations are not claimed until `resume()`. Every engine
  re-reads the mark every `POLL_PAUSE` seconds, so a pause or resume made by another process
  (or the CLI) takes effect everywhere.
- `stop(grace)` stops claiming, lets tries in flight finish for up to `grace` seconds, cancels
  the rest and releases their deliveries (``Store.release``: due now, try not counted), then
  closes the destinations. The shared HTTP client belongs to the caller.
- Several processes may run engines on one store: the lease makes each claim exclusive; a
  crashed process's leases expire and another engine takes the work (at-least-once).
  Concurrency and rate limits are per process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from gateway.clock import Clock
from gateway.delivery import admin
from gateway.delivery.batch import BatchDispatcher
from gateway.delivery.dispatcher import POLL, Dispatcher
from gateway.delivery.ratelimit import TokenBucket
from gateway.delivery.retry import RetryPolicy
from gateway.destination.base import BatchDestination, Closable, Services
from gateway.ops.metrics import Metrics
from gateway.plugin.manager import await_me_maybe
from gateway.store import Store
from gateway.units import Rate, parse_rate

if TYPE_CHECKING:
    from gateway.config.loaded import Loaded

log = logging.getLogger("gateway.delivery")


def _default_rate(component: Any) -> Rate | None:
    """The ``default_rate_limit`` a destination type declares (``"1/s"``), if any."""
    declared = getattr(component, "default_rate_limit", None)
    return parse_rate(declared) if declared else None


class DeliveryEngine:
    """See the module docstring."""

    def __init__(
        self,
        loaded: Loaded,
        store: Store,
        services: Services,
        clock: Clock,
        owner: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.store = store
        self.services = services
        self.clock = clock
        self.owner = owner
        self.pm = loaded.pm
        self.secrets = set(loaded.secrets) | set(services.secrets)
        self.lease = self.config.delivery.lease
        #: Longest idle sleep of a dispatcher (see the module docstring).
        self.poll = POLL
        self.dispatchers: dict[str, Dispatcher] = {}
        #: ``(destination, outcome) -> n`` tries finished by this process, for metrics.
        self.counters: Counter[tuple[str, str]] = Counter()
        #: Prometheus metrics; None in unit tests.
        self.metrics = metrics
        self._stopping = False

    async def start(self) -> None:
        """Instantiate every enabled destination and start its dispatcher."""
        for name, cfg in self.config.destinations.items():
            if not cfg.enabled or name in self.dispatchers:
                continue
            component = self.loaded.registry.get("destinations", cfg.type)
            instance = component(name, self.loaded.destination_options[name], self.services)
            # A type may declare a default (Slack takes about one message per second).
            rate = cfg.rate_limit or _default_rate(component)
            bucket = TokenBucket(rate, self.clock) if rate else None
            batching = isinstance(instance, BatchDestination) and instance.batching is not None
            d = (BatchDispatcher if batching else Dispatcher)(
                self,
                name,
                instance,
                RetryPolicy(self.config.retry_for(name)),
                self.config.concurrency_for(name),
                bucket,
            )
            self.dispatchers[name] = d
            await d.refresh_pause()
            d.task = asyncio.create_task(d.run(), name=f"delivery:{name}")
        log.info("delivery engine %s started: %d destination(s)", self.owner, len(self.dispatchers))

    def wake(self, destination: str | None = None) -> None:
        """New deliveries exist (for `destination`, or any): claim now instead of at the next
        poll. Unknown names are ignored."""
        if destination is None:
            for d in self.dispatchers.values():
                d.wakeup.set()
        elif destination in self.dispatchers:
            self.dispatchers[destination].wakeup.set()

    async def pause(self, name: str, reason: str = "paused by an operator") -> None:
        """Stop sending to `name` (durably, in every process) until `resume`."""
        await admin.pause_destination(self.store, name, reason, self.clock.now())
        if name in self.dispatchers:
            self.dispatchers[name].paused = reason

    async def resume(self, name: str) -> None:
        """Send to `name` again."""
        await admin.resume_destination(self.store, name, self.clock.now())
        if name in self.dispatchers:
            self.dispatchers[name].paused = None
            self.wake(name)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per destination: tries in flight in this process, the pause reason or None, and
        until when a 429's Retry-After holds it (epoch seconds, or None)."""
        now = self.clock.now()
        return {
            n: {
                "in_flight": d.sending,
                "paused": d.paused,
                "held_until": d.hold_until if d.hold_until > now else None,
            }
            for n, d in self.dispatchers.items()
        }

    async def stop(self, grace: float) -> None:
        """Stop claiming; let tries finish within `grace` seconds; release the rest; close
        the destinations."""
        self._stopping = True
        for d in self.dispatchers.values():
            d.stopping = True
            d.wakeup.set()
        await asyncio.gather(
            *(d.task for d in self.dispatchers.values() if d.task), return_exceptions=True
        )
        tries = [t for d in self.dispatchers.values() for t in d.tries.values()]
        tasks = [t.task for t in tries if t.task is not None]
        if tasks:
            log.info("delivery: waiting up to %gs for %d tries in flight", grace, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, grace))
            for t in tries:
                if t.task in pending and t.sending:
                    t.task.cancel()
            if pending:  # cancelled ones end at once; ones recording their result finish it
                await asyncio.wait(pending, timeout=5.0)
        unrecorded = [t.delivery.id for t in tries if not t.recorded]
        unrecorded += [i for d in self.dispatchers.values() for i in d.waiting()]
        if unrecorded:
            log.warning("delivery: releasing %d unfinished deliveries", len(unrecorded))
            try:
                await self.store.release(unrecorded, self.clock.now())
            except Exception:  # their leases expire and another worker takes them
                log.exception("delivery: could not release %d deliveries", len(unrecorded))
        for d in self.dispatchers.values():
            if not isinstance(d.instance, Closable):
                continue
            try:
                await await_me_maybe(d.instance.close())
            except Exception:
                log.exception("destination %r failed to close", d.name)
