"""Batched delivery (digests): one send covers many deliveries of one destination.

A destination type opts in by implementing `gateway.destination.BatchDestination`: its
``batching`` (a `gateway.destination.Batching`: ``window`` seconds, ``max_events``) and
``async deliver_batch(deliveries) -> Outcome`` (the email digest does). Its `BatchDispatcher`
waits until the oldest pending delivery has waited ``window`` or ``max_events`` are pending,
claims up to ``max_events`` due deliveries under the usual lease, sends them as one, and records
the one outcome for each delivery through the normal retry policy. Nothing is held in memory
between windows: the deliveries stay in the store, so a crash loses nothing and a failed digest
is retried like any delivery (its deliveries join the next batch when due).
"""

from __future__ import annotations

import asyncio

from gateway.delivery.dispatcher import Dispatcher, Try, guarded_call
from gateway.destination.base import BatchDestination
from gateway.store import DeliveryRecord


class BatchDispatcher(Dispatcher):
    """`Dispatcher` for a `BatchDestination` (see the module docstring)."""

    async def claim(self, now: float) -> float | None:
        engine, instance = self.engine, self.instance
        assert isinstance(instance, BatchDestination) and instance.batching is not None
        window, most = instance.batching.window, instance.batching.max_events
        if self.sending:
            return None  # one batch at a time; its end wakes us
        due = await engine.store.next_due(self.name)
        if due is None:
            return None
        if due > now:
            return due - now
        pending = [
            r
            for r in await engine.store.queue_stats(now)
            if r["destination"] == self.name and r["state"] == "pending"
        ]
        count = pending[0]["count"] if pending else 0
        oldest = pending[0]["oldest"] if pending and pending[0]["oldest"] is not None else now
        if count < most and now < oldest + window:
            return oldest + window - now
        if self.bucket is not None:
            if self.bucket.available() < 1:
                return self.bucket.wait_time()
            self.bucket.take(1)
        store = engine.store
        batch = await store.claim_deliveries(engine.owner, self.name, most, engine.lease, now)
        if self.stopping:
            if batch:
                await engine.store.release([x.id for x in batch], engine.clock.now())
            return None
        if not batch:
            return 0.05  # due but taken by another process
        tries = [Try(x) for x in batch]
        task = asyncio.create_task(self.send_batch(tries), name=f"deliver-batch:{self.name}")
        for t in tries:
            t.task = task
            self.tries[t.delivery.id] = t
        self.sending += 1
        return None

    async def send_batch(self, tries: list[Try]) -> None:
        """Send one batch and record its outcome for every delivery in it."""
        assert isinstance(self.instance, BatchDestination)
        started = self.engine.clock.now()
        deliveries: list[DeliveryRecord] = [t.delivery for t in tries]
        try:
            outcome = await guarded_call(self.instance.deliver_batch(deliveries), self.try_timeout)
            for t in tries:
                t.sending = False
            self.sending -= 1
            for t in tries:
                await self.record(t, outcome, started)
        finally:
            if any(t.sending for t in tries):
                self.sending -= 1
            for t in tries:
                self.tries.pop(t.delivery.id, None)
            self.wakeup.set()
