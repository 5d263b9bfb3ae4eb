"""Thirty days of traffic on a manual clock, on every store backend: the retention schedule
keeps the store's row counts bounded by traffic times retention, whatever the uptime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from manual_clock import ManualClock
from test_store_contract import BACKENDS, LEASE, T0

from gateway.config.models import RetentionConfig
from gateway.ids import new_id
from gateway.ops.housekeeping import Housekeeper
from gateway.store import AttemptRecord, FinishedEvent, IncomingEvent, NewDelivery, Store

HOUR, DAY = 3600.0, 86400.0
STEP = 6 * HOUR
PER_STEP = 10  # callbacks per step: 40 a day; 1 in 10 invalid, 1 in 10 dead-lettered
RETENTION = RetentionConfig(
    events="2d", delivered="2d", dead="3d", quarantined="3d", interval="1h"
)  # dedupe: 25h, the minimum; plugin marks follow it


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each backend the contract suite knows."""
    async with BACKENDS[request.param](tmp_path) as make:
        opened = make()
        await opened.open()
        yield opened
        await opened.close()


def element(n: int) -> IncomingEvent:
    raw = json.dumps({"message_uuid": f"m-{n}", "status": "delivered"})
    problems = ("status_time: required field is missing",) if n % 10 == 9 else ()
    return IncomingEvent(raw, f"k-{n}", f"m-{n}", "delivered", problems)


async def one_step(store: Store, clock: ManualClock, first: int) -> None:
    now = clock.now()
    await store.ingest("revicom", [element(n) for n in range(first, first + PER_STEP)], now)
    claimed = await store.claim_events("router", 100, LEASE, now)
    finished = [
        FinishedEvent(
            e.id, "routed", [NewDelivery(new_id("msg", now), e.id, "all", "crm", now)], now
        )
        for e in claimed
    ]
    await store.finish_events(finished)
    await asyncio.gather(
        *(store.set_mark(f"ordering:all:{e.message_uuid}:status", "x", now) for e in claimed)
    )
    work = await store.claim_deliveries("worker", "crm", 100, LEASE, now)
    await asyncio.gather(
        *(
            store.finish_attempt(
                d.id,
                AttemptRecord(now, now, "dead" if i == 0 else "delivered"),
                "dead" if i == 0 else "delivered",
                None,
                True,
                now,
            )
            for i, d in enumerate(work)
        )
    )


async def totals(store: Store) -> tuple[int, int]:
    counts = await store.counts()
    return sum(counts["events"].values()), sum(counts["deliveries"].values())


async def test_thirty_days_of_traffic_keep_the_store_bounded(backend: Store) -> None:
    store = backend
    clock = ManualClock(T0)
    keeper = Housekeeper(store, RETENTION, clock)
    per_day: list[tuple[int, int]] = []
    n = 0
    for step in range(int(30 * DAY / STEP)):
        await one_step(store, clock, n)
        n += PER_STEP
        assert await keeper.run_due() is not None  # one pass per step (interval < step)
        if (step + 1) % int(DAY / STEP) == 0:
            per_day.append(await totals(store))
        clock.advance(STEP)

    received = n  # 1,200 callbacks in 30 days
    events, deliveries = per_day[-1]
    # Kept: up to 3 days of quarantined and dead, 2 of the rest, plus one pass interval.
    assert events <= 40 * 3.5, per_day
    assert deliveries <= 36 * 3.5, per_day
    assert events < received / 8
    # A plateau: the last ten days hold as many rows as days 10 to 20.
    middle, last = per_day[10:20], per_day[20:]
    assert max(e for e, _ in last) <= max(e for e, _ in middle) * 1.1
    assert max(d for _, d in last) <= max(d for _, d in middle) * 1.1
    # Plugin marks follow the dedupe window; dedupe keys keep theirs (25h).
    assert await store.get_mark("ordering:all:m-0:status") is None
    recent = n - PER_STEP
    assert await store.get_mark(f"ordering:all:m-{recent}:status") is not None
    again = await store.ingest("revicom", [element(0), element(recent)], clock.now())
    assert (again.accepted, again.duplicates) == (1, 1)
