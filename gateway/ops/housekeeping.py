"""Retention: remove what `retention:` no longer keeps, on a schedule and on demand.

`purge_once` is the one pass both the schedule (`Housekeeper`, in every gateway process) and
``callback-gateway purge`` run: `Store.purge` with the configured `RetentionPolicy`, then
`Store.reclaim` (SQLite hands freed pages back and checkpoints its WAL).

Several processes (Sanic workers, gateway instances on one Redis) each run a `Housekeeper`, but
one pass per interval is enough: before a scheduled pass a process advances the gateway mark
``retention:slot`` to the current interval's start, and only the process that advanced it
runs the pass (a pass run twice would only cost time: every delete is conditional). The CLI
verb runs whenever asked.

After each scheduled pass the store's free disk space is checked against
``retention.min_free_space`` (a WARNING when below).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gateway.clock import Clock
from gateway.config.models import RetentionConfig
from gateway.errors import StoreError
from gateway.store import Store
from gateway.store.base import RetentionPolicy

log = logging.getLogger("gateway.ops.housekeeping")

#: Rows of one kind a retention step removes in one transaction (or Redis script call).
BATCH = 500
#: Share of a pass's time spent deleting: between steps it rests as long as the step took, so
#: intake has the store (and the CPU) at least half of the time while a big pass runs.
DUTY = 0.5
SLOT_KEY = "retention:slot"


def policy_of(
    retention: RetentionConfig, batch: int = BATCH, duty: float = DUTY
) -> RetentionPolicy:
    """The store-level policy of a `retention:` section. Plugin marks (ordering, Slack
    threads) are kept for the dedupe window: a status can arrive out of order, or be resent,
    for as long as the provider resends."""
    return RetentionPolicy(
        dedupe=retention.dedupe,
        events=retention.events,
        delivered=retention.delivered,
        dead=retention.dead,
        quarantined=retention.quarantined,
        marks=retention.dedupe,
        batch=batch,
        duty=duty,
    )


async def purge_once(store: Store, retention: RetentionConfig, now: float) -> dict[str, int]:
    """One retention pass now: delete what `retention` no longer keeps, give the space back.
    Returns counts per kind (`gateway.store.base.PURGE_KINDS`)."""
    removed = await store.purge(policy_of(retention), now)
    await store.reclaim()
    return removed


def describe(removed: dict[str, int]) -> str:
    """``events=12 delivered=30 ...`` (every kind, zeros included)."""
    return " ".join(f"{kind}={n}" for kind, n in removed.items())


class Housekeeper:
    """Runs `purge_once` every ``retention.interval`` (see the module docstring)."""

    def __init__(self, store: Store, retention: RetentionConfig, clock: Clock) -> None:
        self.store = store
        self.retention = retention
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        #: The last pass's result (None before the first), for tests and metrics.
        self.last: dict[str, int] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_due(self) -> dict[str, int] | None:
        """Run a pass if no process ran one in the current interval; its counts, or None."""
        now = self.clock.now()
        interval = self.retention.interval
        # The interval's start time as a sortable rank: after a reload that lengthens the
        # interval, the schedule waits at most one new interval.
        slot = f"{(now // interval) * interval:020.3f}"
        advanced, _ = await self.store.advance_mark(
            SLOT_KEY, slot, f"{interval!r}", now, scope="gateway"
        )
        if not advanced:
            return None
        started = time.monotonic()
        removed = await purge_once(self.store, self.retention, now)
        self.last = removed
        if any(removed.values()):
            log.info(
                "retention: removed %s in %.1fs", describe(removed), time.monotonic() - started
            )
        await self.check_space()
        return removed

    async def check_space(self) -> None:
        threshold = self.retention.min_free_space
        if not threshold:
            return
        free = (await self.store.footprint()).free_bytes
        if free is not None and free < threshold:
            log.warning(
                "store: %d MiB free on the store's filesystem, below retention.min_free_space"
                " (%d MiB); shorten retention or add disk",
                free // 2**20,
                threshold // 2**20,
            )

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
            except StoreError as e:
                log.warning("retention: store unavailable: %s", e)
            except Exception:  # a bug must not end the schedule
                log.exception("retention: the pass failed")
            await self.clock.sleep(self.retention.interval)
