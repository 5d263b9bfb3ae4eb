"""Time as a dependency: production uses `SystemClock`; tests pass a clock they control.

Everything that schedules (retries, leases, rate limits, dedupe retention) takes a `Clock` so
that schedules are tested exactly, without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time in epoch seconds and an awaitable sleep."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (may return early when the caller is woken by other means)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
