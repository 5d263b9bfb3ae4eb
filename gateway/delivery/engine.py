"""The delivery engine: one dispatcher per destination, claiming due deliveries under a lease.

Contract (what `gateway.server.app` relies on):

- `start()` instantiates each enabled destination once (its registered type, with the options
  ``check`` validated) and starts one dispatcher task per destination.
- A dispatcher claims due deliveries (``Store.claim_deliveries``, lease ``delivery.lease``) up to
  its free concurrency slots (``concurrency`` or ``delivery.concurrency``) and its rate-limit
  tokens, runs each try as its own task, and otherwise sleeps until ``Store.next_due``, a
  `wake()`, a freed slot, or `POLL` seconds (deliveries created by another process).
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
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.clock import Clock
from gateway.config.redact import scrub
from gateway.delivery import admin
from gateway.delivery.batch import batch_step
from gateway.delivery.ratelimit import TokenBucket
from gateway.delivery.retry import RetryPolicy
from gateway.destination.base import Outcome, Services
from gateway.errors import PluginError
from gateway.ops import logs
from gateway.ops.metrics import Metrics
from gateway.plugin.hooks import call_hook
from gateway.plugin.manager import await_me_maybe
from gateway.store import AttemptRecord, DeliveryRecord, Store
from gateway.units import Rate, parse_rate

if TYPE_CHECKING:
    from gateway.config.load import Loaded

log = logging.getLogger("gateway.delivery")

#: Longest idle sleep: deliveries created by another process are noticed within this.
POLL = 1.0
#: How often a dispatcher re-reads its pause mark.
POLL_PAUSE = 5.0
#: Back-off after the store failed a claim.
STORE_RETRY = 1.0
#: Tries recording their result, as a multiple of `concurrency`, before claiming pauses.
RECORDING_BACKLOG = 4
#: Share of the lease a single try may take before it is abandoned as a timeout.
TRY_SHARE_OF_LEASE = 0.9


@dataclass
class _Try:
    delivery: DeliveryRecord
    task: asyncio.Task[None] | None = None
    sending: bool = True
    recorded: bool = False


async def guarded_call(call: Awaitable[Any], limit: float) -> Outcome:
    """What one destination call achieved within `limit` seconds. Running out of time, an
    exception or a result that is not an `Outcome` (a destination bug or an unclassified
    failure) is a retry."""
    try:
        async with asyncio.timeout(limit):
            outcome = await call
    except TimeoutError:
        return Outcome.retry(f"no result within {limit:g}s")
    except Exception as e:
        return Outcome.retry(f"{type(e).__name__}: {e}")
    if not isinstance(outcome, Outcome):
        return Outcome.retry(f"destination returned {outcome!r}, not an Outcome")
    return outcome


def _default_rate(component: Any) -> Rate | None:
    """The ``default_rate_limit`` a destination type declares (``"1/s"``), if any."""
    declared = getattr(component, "default_rate_limit", None)
    return parse_rate(declared) if declared else None


class DeliveryEngine:
    """See the module docstring."""

    def __init__(
        self, loaded: Loaded, store: Store, services: Services, clock: Clock, owner: str,
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
        self.dispatchers: dict[str, _Dispatcher] = {}
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
            d = _Dispatcher(
                self, name, instance, RetryPolicy(self.config.retry_for(name)),
                self.config.concurrency_for(name), bucket,
            )
            self.dispatchers[name] = d
            await d.refresh_pause()
            d.task = asyncio.create_task(d.run(), name=f"delivery:{name}")
        log.info("delivery engine %s started: %d destination(s)", self.owner,
                 len(self.dispatchers))

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
        return {n: {"in_flight": d.sending, "paused": d.paused,
                    "held_until": d.hold_until if d.hold_until > now else None}
                for n, d in self.dispatchers.items()}

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
        if unrecorded:
            log.warning("delivery: releasing %d unfinished deliveries", len(unrecorded))
            try:
                await self.store.release(unrecorded, self.clock.now())
            except Exception:  # their leases expire and another worker takes them
                log.exception("delivery: could not release %d deliveries", len(unrecorded))
        for d in self.dispatchers.values():
            close = getattr(d.instance, "close", None)
            if close is None:
                continue
            try:
                await await_me_maybe(close())
            except Exception:
                log.exception("destination %r failed to close", d.name)


class _Dispatcher:
    """Claims and runs the tries of one destination (see the module docstring)."""

    def __init__(
        self, engine: DeliveryEngine, name: str, instance: Any, policy: RetryPolicy,
        concurrency: int, bucket: TokenBucket | None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.instance = instance
        self.policy = policy
        self.concurrency = concurrency
        self.bucket = bucket
        # Claim in batches once a quarter of the slots are free: fewer store round trips when
        # draining a backlog, at the cost of a slot or two idling for one try's duration.
        self.min_batch = max(1, concurrency // 4)
        self.try_timeout = engine.lease * TRY_SHARE_OF_LEASE
        self.tries: dict[str, _Try] = {}
        #: Tries whose request is in progress (the rest of `tries` are recording a result).
        self.sending = 0
        self.wakeup = asyncio.Event()
        self.stopping = False
        self.paused: str | None = None
        #: A 429's Retry-After holds the whole destination (in this process) until then.
        self.hold_until = 0.0
        self.task: asyncio.Task[None] | None = None
        self._pause_checked = 0.0

    async def refresh_pause(self) -> None:
        self.paused = await admin.paused_reason(self.engine.store, self.name)
        self._pause_checked = self.engine.clock.now()

    async def run(self) -> None:
        while not self.stopping:
            self.wakeup.clear()
            try:
                delay = await self.step()
            except Exception:
                log.exception("delivery to %r: claiming failed; trying again", self.name)
                delay = STORE_RETRY
            if self.stopping:
                break
            if delay is not None and delay <= 0:
                await asyncio.sleep(0)
                continue
            await self.wait(POLL if delay is None else min(delay, POLL))

    async def wait(self, seconds: float) -> None:
        """Until woken or `seconds` pass on the engine's clock."""
        if self.wakeup.is_set():
            return
        waiter = asyncio.ensure_future(self.wakeup.wait())
        sleeper = asyncio.ensure_future(self.engine.clock.sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    async def step(self) -> float | None:
        """Claim what may start now; return seconds until worth trying again (None: until
        woken or polled, 0: at once)."""
        engine = self.engine
        now = engine.clock.now()
        if now - self._pause_checked >= POLL_PAUSE:
            await self.refresh_pause()
        if self.paused is not None:
            return POLL_PAUSE
        if self.hold_until > now:
            return self.hold_until - now
        if getattr(self.instance, "batch", None):
            return await batch_step(self, now)
        # `concurrency` bounds requests to the destination; a try that is only recording its
        # result frees its slot, so sending overlaps the store's commit. The recording backlog
        # is bounded too, so a slow store slows claiming instead of piling up results.
        if len(self.tries) >= self.concurrency * RECORDING_BACKLOG:
            return None
        free = self.concurrency - self.sending
        if free < (self.min_batch if self.sending else 1):
            return None  # a finishing try wakes us
        limit = free
        if self.bucket is not None:
            tokens = self.bucket.available()
            if tokens < 1:
                return self.bucket.wait_time()
            limit = min(limit, tokens)
        batch = await engine.store.claim_deliveries(
            engine.owner, self.name, limit, engine.lease, now)
        if self.stopping:
            if batch:
                await engine.store.release([d.id for d in batch], engine.clock.now())
            return None
        if self.bucket is not None and batch:
            self.bucket.take(len(batch))
        for delivery in batch:
            t = _Try(delivery)
            self.tries[delivery.id] = t
            self.sending += 1
            t.task = asyncio.create_task(self.attempt(t), name=f"deliver:{delivery.id}")
        if len(batch) == limit:
            return 0.0  # there may be more due
        due = await engine.store.next_due(self.name)
        if due is None:
            return None
        # Never spin: something due but not claimable (taken by another process) waits a bit.
        return max(due - engine.clock.now(), 0.05)

    async def attempt(self, t: _Try) -> None:
        """One try of `t.delivery`: send, decide, record, notify."""
        engine, d = self.engine, t.delivery
        started = engine.clock.now()
        try:
            outcome = await guarded_call(self.instance.deliver(d), self.try_timeout)
            if outcome.kind == "throttled" and outcome.retry_after:
                # The receiver asked for a pause, not just for this one delivery: sending the
                # others meanwhile would only collect more 429s. Set before the slot frees.
                self.hold_until = max(self.hold_until, engine.clock.now() + outcome.retry_after)
            self._sent(t)
            await self.record(t, outcome, started)
        finally:
            self._sent(t)
            self.tries.pop(d.id, None)
            self.wakeup.set()

    def _sent(self, t: _Try) -> None:
        if t.sending:
            t.sending = False
            self.sending -= 1
            self.wakeup.set()

    async def record(self, t: _Try, outcome: Outcome, started: float) -> None:
        engine, d = self.engine, t.delivery
        finished = engine.clock.now()
        decision = self.policy.decide(d, outcome, started, finished)
        error = scrub(decision.error, engine.secrets) if decision.error else None
        attempt = AttemptRecord(started, finished, decision.attempt_outcome, outcome.status, error)
        try:
            await engine.store.finish_attempt(
                d.id, attempt, decision.state, decision.next_attempt_at, decision.counts,
                finished)
        except Exception:
            log.exception("delivery %s to %r: could not record the try; its lease will"
                          " expire and it will be tried again", d.id, self.name)
            return
        t.recorded = True
        engine.counters[(self.name, decision.attempt_outcome)] += 1
        if engine.metrics is not None:
            engine.metrics.child("deliveries", self.name, decision.attempt_outcome).inc()
            engine.metrics.child("attempt_seconds", self.name).observe(
                max(0.0, finished - started))
        if decision.state == "dead":
            log.warning("delivery %s to %r is dead: %s", d.id, self.name, error)
        else:
            # Delivered at INFO; retries and throttling at WARNING, so log_level: warning
            # still shows every problem.
            level = logging.INFO if decision.state == "delivered" else logging.WARNING
            logs.line(log, level, "delivery=%s destination=%s outcome=%s status=%s%s", d.id,
                      self.name, decision.attempt_outcome,
                      outcome.status if outcome.status is not None else "-",
                      f" error={error}" if error else "")
        if outcome.pause_destination and self.paused is None:
            log.error(
                "DESTINATION %r PAUSED: %s. Nothing more is sent to it until an operator"
                " resumes it; its deliveries wait.", self.name, error)
            await engine.pause(self.name, error or "paused by the destination")
        await self.notify(d, decision.state, error, outcome.status, decision.counts)

    async def notify(
        self, d: DeliveryRecord, state: str, error: str | None, status: int | None, counts: bool
    ) -> None:
        """The ``delivery_finished`` hook, through pluggy's caller. A failure is logged with the
        plugin's name and otherwise ignored (the delivery is already recorded)."""
        hook = self.engine.pm.hook.delivery_finished
        if not hook.get_hookimpls():
            return
        delivery = {
            "id": d.id, "event_id": d.event_id, "source": d.source, "route": d.route,
            "destination": d.destination, "attempts": d.attempts + (1 if counts else 0),
            "state": state, "message_uuid": d.message_uuid,
        }
        outcome = {"state": state, "error": error, "status": status}
        try:
            await call_hook(hook, delivery=delivery, outcome=outcome)
        except PluginError as e:
            log.error("plugin %r failed in delivery_finished (ignored): %s: %s", e.plugin,
                      type(e.error).__name__, scrub(str(e.error), self.engine.secrets))
