"""Batched delivery (digests): one send covers many deliveries of one destination.

A destination type opts in by exposing ``batch = (window_seconds, max_events)`` on its instance
and an ``async deliver_batch(deliveries) -> Outcome`` method (the email digest does). Its
dispatcher then waits until the oldest pending delivery has waited ``window`` or ``max_events``
are pending, claims up to ``max_events`` due deliveries under the usual lease, sends them as one,
and records the one outcome for each delivery through the normal retry policy. Nothing is held
in memory between windows: the deliveries stay in the store, so a crash loses nothing and a
failed digest is retried like any delivery (its deliveries join the next batch when due).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.delivery.engine import _Dispatcher, _Try
    from gateway.store import DeliveryRecord


async def batch_step(d: _Dispatcher, now: float) -> float | None:
    """The batching counterpart of `_Dispatcher.step` for `d` (see the module docstring)."""
    from gateway.delivery.engine import _Try

    engine = d.engine
    window, most = d.instance.batch
    if d.sending:
        return None  # one batch at a time; its end wakes us
    due = await engine.store.next_due(d.name)
    if due is None:
        return None
    if due > now:
        return due - now
    pending = [r for r in await engine.store.queue_stats(now)
               if r["destination"] == d.name and r["state"] == "pending"]
    count = pending[0]["count"] if pending else 0
    oldest = pending[0]["oldest"] if pending and pending[0]["oldest"] is not None else now
    if count < most and now < oldest + window:
        return oldest + window - now
    if d.bucket is not None:
        if d.bucket.available() < 1:
            return d.bucket.wait_time()
        d.bucket.take(1)
    batch = await engine.store.claim_deliveries(engine.owner, d.name, most, engine.lease, now)
    if d.stopping:
        if batch:
            await engine.store.release([x.id for x in batch], engine.clock.now())
        return None
    if not batch:
        return 0.05  # due but taken by another process
    tries = [_Try(x) for x in batch]
    task = asyncio.create_task(send_batch(d, tries), name=f"deliver-batch:{d.name}")
    for t in tries:
        t.task = task
        d.tries[t.delivery.id] = t
    d.sending += 1
    return None


async def send_batch(d: _Dispatcher, tries: list[_Try]) -> None:
    """Send one batch and record its outcome for every delivery in it."""
    from gateway.delivery.engine import guarded_call

    engine = d.engine
    started = engine.clock.now()
    deliveries: list[DeliveryRecord] = [t.delivery for t in tries]
    try:
        outcome = await guarded_call(d.instance.deliver_batch(deliveries), d.try_timeout)
        for t in tries:
            t.sending = False
        d.sending -= 1
        for t in tries:
            await d.record(t, outcome, started)
    finally:
        if any(t.sending for t in tries):
            d.sending -= 1
        for t in tries:
            d.tries.pop(t.delivery.id, None)
        d.wakeup.set()
