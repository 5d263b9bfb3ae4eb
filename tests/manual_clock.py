"""A `gateway.clock.Clock` the test moves by hand: `now()` stands still until `advance()`,
and `sleep()` returns when the clock has been advanced past its deadline."""

from __future__ import annotations

import asyncio


class ManualClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline passed."""
        self.t += seconds
        still = []
        for deadline, future in self._sleepers:
            if future.done():
                continue
            if deadline <= self.t:
                future.set_result(None)
            else:
                still.append((deadline, future))
        self._sleepers = still
