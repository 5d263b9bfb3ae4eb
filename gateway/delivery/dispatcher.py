"""One destination's dispatcher: claims its due deliveries under a lease and runs each try.

`Dispatcher` is what `gateway.delivery.engine.DeliveryEngine` starts per destination (see the
engine's docstring for the contract); `gateway.delivery.batch.BatchDispatcher` is its variant
for `gateway.destination.BatchDestination` types. `guarded_call` bounds one destination call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import pluggy

from gateway.clock import Clock
from gateway.config.redact import scrub
from gateway.delivery import admin
from gateway.delivery.ratelimit import TokenBucket
from gateway.delivery.retry import RetryPolicy
from gateway.destination.base import Outcome
from gateway.errors import PluginError, StoreError
from gateway.ops import logs
from gateway.ops.metrics import Metrics
from gateway.plugin.hooks import call_hook
from gateway.store import AttemptRecord, DeliveryRecord, Store

log = logging.getLogger("gateway.delivery")

#: Longest idle sleep: deliveries created by another process are noticed within this.
POLL = 1.0
#: Longest idle sleep when the store announces other processes' deliveries (``Store.watch``);
#: what the announcements cannot cover (a retry another process scheduled and then died
#: before making) is noticed within this.
POLL_WATCHED = 10.0
#: How often a dispatcher re-reads its pause mark.
POLL_PAUSE = 5.0
#: Back-off after the store failed a claim.
STORE_RETRY = 1.0
#: Tries recording their result, as a multiple of `concurrency`, before claiming pauses.
RECORDING_BACKLOG = 4
#: Share of the lease a single try may take before it is abandoned as a timeout.
TRY_SHARE_OF_LEASE = 0.9
#: Claimed deliveries a dispatcher keeps waiting for a slot, as a multiple of `concurrency`.
#: A slot that frees starts the next one at once instead of after a claim's round trip to
#: the store (on a busy gateway that round trip, not the destination, bounded throughput).
PREFETCH = 3


def recordable(details: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
    """`Outcome.details` as the attempt record keeps them: JSON (values that are not become
    their text) with secrets scrubbed."""
    if not details:
        return {}
    text = scrub(json.dumps(details, default=str, ensure_ascii=False), secrets)
    try:
        kept: dict[str, Any] = json.loads(text)
    except ValueError:  # a mask landed inside JSON syntax: keep the text
        return {"text": text}
    return kept


class Engine(Protocol):
    """What a dispatcher needs from its engine."""

    store: Store
    clock: Clock
    owner: str
    lease: float
    poll: float
    pm: pluggy.PluginManager
    secrets: set[str]
    counters: Counter[tuple[str, str]]
    metrics: Metrics | None

    async def pause(self, name: str, reason: str = ...) -> None: ...


@dataclass
class Try:
    """One delivery being tried: its task, whether its request is still in progress, and
    whether its result reached the store."""

    delivery: DeliveryRecord
    task: asyncio.Task[None] | None = None
    sending: bool = True
    recorded: bool = False
    #: Seconds the try may take: what is left of `TRY_SHARE_OF_LEASE` of its lease.
    timeout: float = 0.0


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


class Dispatcher:
    """Claims and runs the tries of one destination (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        instance: Any,
        policy: RetryPolicy,
        concurrency: int,
        bucket: TokenBucket | None,
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
        self.tries: dict[str, Try] = {}
        #: Claimed deliveries waiting for a slot, with the time of their claim (`PREFETCH`).
        self.ready: deque[tuple[DeliveryRecord, float]] = deque()
        #: Waiting deliveries whose lease ran too short to start; released by `step`.
        self.stale: list[str] = []
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
            except StoreError as e:  # the store is away: one line, not a traceback a second
                log.error("delivery to %r: store unavailable (%s); trying again", self.name, e)
                delay = STORE_RETRY
            except Exception:
                log.exception("delivery to %r: claiming failed; trying again", self.name)
                delay = STORE_RETRY
            if self.stopping:
                break
            if delay is not None and delay <= 0:
                await asyncio.sleep(0)
                continue
            poll = self.engine.poll
            await self.wait(poll if delay is None else min(delay, poll))

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
        now = self.engine.clock.now()
        if now - self._pause_checked >= POLL_PAUSE:
            await self.refresh_pause()
        if self.paused is not None:
            self.stale.extend(d.id for d, _ in self.ready)  # paused: hand them back
            self.ready.clear()
        if self.stale:
            # Not one this dispatcher claimed again meanwhile (its lease had run out).
            mine = set(self.tries) | {d.id for d, _ in self.ready}
            stale, self.stale = [i for i in self.stale if i not in mine], []
            if stale:
                await self.engine.store.release(stale, now)
        if self.paused is not None:
            return POLL_PAUSE
        if self.hold_until > now:
            return self.hold_until - now
        return await self.claim(now)

    def waiting(self) -> list[str]:
        """Claimed deliveries no try has started (and none will): the engine releases them."""
        ids = [d.id for d, _ in self.ready] + self.stale
        self.ready.clear()
        self.stale = []
        return ids

    def start_ready(self) -> None:
        """Start tries of waiting deliveries while slots are free (none while stopping or
        held). A delivery whose lease no longer covers half a try is set aside for release:
        the store hands it out again, so no try can outlive its lease."""
        now = self.engine.clock.now()
        while self.ready and self.sending < self.concurrency:
            if self.stopping or self.paused is not None or self.hold_until > now:
                return
            delivery, claimed = self.ready.popleft()
            left = claimed + self.try_timeout - now
            if left < self.try_timeout / 2:
                self.stale.append(delivery.id)
                self.wakeup.set()
                continue
            t = Try(delivery, timeout=min(self.try_timeout, left))
            self.tries[delivery.id] = t
            self.sending += 1
            t.task = asyncio.create_task(self.attempt(t), name=f"deliver:{delivery.id}")

    async def claim(self, now: float) -> float | None:
        """Claim what may start now or soon and start what slots allow (the rest of `step`)."""
        engine = self.engine
        # `concurrency` bounds requests to the destination; a try that is only recording its
        # result frees its slot, so sending overlaps the store's commit. The recording backlog
        # is bounded too, so a slow store slows claiming instead of piling up results.
        # Claims run ahead of the slots by `PREFETCH`, so a freed slot never waits for one.
        self.start_ready()
        if self.stale:  # hand those back first: a claim now could take them again
            return 0.0
        if len(self.tries) >= self.concurrency * RECORDING_BACKLOG:
            return None
        room = self.concurrency * (1 + PREFETCH) - self.sending - len(self.ready)
        if room < (self.min_batch if self.sending or self.ready else 1):
            return None  # a finishing try wakes us
        limit = room
        if self.bucket is not None:
            tokens = self.bucket.available()
            if tokens < 1:
                return self.bucket.wait_time()
            limit = min(limit, tokens)
        batch = await engine.store.claim_deliveries(
            engine.owner, self.name, limit, engine.lease, now
        )
        if self.stopping:
            if batch:
                await engine.store.release([d.id for d in batch], engine.clock.now())
            return None
        if self.bucket is not None and batch:
            self.bucket.take(len(batch))
        self.ready.extend((d, now) for d in batch)
        self.start_ready()
        if len(batch) == limit:
            return 0.0  # there may be more due
        due = await engine.store.next_due(self.name)
        if due is None:
            return None
        # Never spin: something due but not claimable (taken by another process) waits a bit.
        return max(due - engine.clock.now(), 0.05)

    async def attempt(self, t: Try) -> None:
        """One try of `t.delivery`: send, decide, record, notify."""
        engine, d = self.engine, t.delivery
        started = engine.clock.now()
        try:
            outcome = await guarded_call(self.instance.deliver(d), t.timeout or self.try_timeout)
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

    def _sent(self, t: Try) -> None:
        if t.sending:
            t.sending = False
            self.sending -= 1
            self.start_ready()
            self.wakeup.set()

    async def record(self, t: Try, outcome: Outcome, started: float) -> None:
        engine, d = self.engine, t.delivery
        finished = engine.clock.now()
        decision = self.policy.decide(d, outcome, started, finished)
        error = scrub(decision.error, engine.secrets) if decision.error else None
        attempt = AttemptRecord(
            started,
            finished,
            decision.attempt_outcome,
            outcome.status,
            error,
            details=recordable(outcome.details, engine.secrets),
        )
        try:
            await engine.store.finish_attempt(
                d.id, attempt, decision.state, decision.next_attempt_at, decision.counts, finished
            )
        except Exception as e:
            log.error(
                "delivery %s to %r: could not record the try (%s); its lease will"
                " expire and it will be tried again",
                d.id,
                self.name,
                e,
                exc_info=not isinstance(e, StoreError),
            )
            return
        t.recorded = True
        engine.counters[(self.name, decision.attempt_outcome)] += 1
        if engine.metrics is not None:
            engine.metrics.count("deliveries", (self.name, decision.attempt_outcome))
            engine.metrics.observe("attempt_seconds", (self.name,), max(0.0, finished - started))
        if decision.state == "dead":
            log.warning("delivery %s to %r is dead: %s", d.id, self.name, error)
        else:
            # Delivered at INFO; retries and throttling at WARNING, so log_level: warning
            # still shows every problem.
            level = logging.INFO if decision.state == "delivered" else logging.WARNING
            logs.line(
                log,
                level,
                "delivery=%s destination=%s outcome=%s status=%s%s",
                d.id,
                self.name,
                decision.attempt_outcome,
                outcome.status if outcome.status is not None else "-",
                f" error={error}" if error else "",
            )
        if outcome.pause_destination and self.paused is None:
            log.error(
                "DESTINATION %r PAUSED: %s. Nothing more is sent to it until an operator"
                " resumes it; its deliveries wait.",
                self.name,
                error,
            )
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
            "id": d.id,
            "event_id": d.event_id,
            "source": d.source,
            "route": d.route,
            "destination": d.destination,
            "attempts": d.attempts + (1 if counts else 0),
            "state": state,
            "message_uuid": d.message_uuid,
        }
        outcome = {"state": state, "error": error, "status": status}
        try:
            await call_hook(hook, delivery=delivery, outcome=outcome)
        except PluginError as e:
            log.error(
                "plugin %r failed in delivery_finished (ignored): %s: %s",
                e.plugin,
                type(e.error).__name__,
                scrub(str(e.error), self.engine.secrets),
            )
