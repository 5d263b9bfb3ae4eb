"""Retention: forget old dedupe keys, delivered deliveries and marks on a schedule.

Runs in every gateway process; the deletes are idempotent, so several processes doing it is
harmless. Dedupe keys live at least ``retention.dedupe`` (25 hours minimum) because the provider
resends for about a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.clock import Clock
from gateway.config.models import RetentionConfig
from gateway.errors import StoreError
from gateway.store import Store

log = logging.getLogger("gateway.ops.housekeeping")

INTERVAL = 600.0


async def purge_once(store: Store, retention: RetentionConfig, now: float) -> dict[str, int]:
    """Delete what `retention` no longer keeps; returns counts per kind."""
    return await store.purge(now - retention.dedupe, now - retention.delivered)


class Housekeeper:
    def __init__(self, store: Store, retention: RetentionConfig, clock: Clock) -> None:
        self.store = store
        self.retention = retention
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                removed = await purge_once(self.store, self.retention, self.clock.now())
                if any(removed.values()):
                    log.info("retention: removed %s", removed)
            except StoreError as e:
                log.warning("retention: store unavailable: %s", e)
            await self.clock.sleep(INTERVAL)
