"""A token bucket per destination (``rate_limit: 1/s`` or ``{rate: 5/s, burst: 10}``).

The bucket holds at most `burst` tokens and refills at `per_second`; each try takes one token.
It is per process: with several processes sending to one destination each has its own bucket
(documented in ``docs/operations.md``; run delivery in one process when the limit is strict).
"""

from __future__ import annotations

from gateway.clock import Clock
from gateway.units import Rate


class TokenBucket:
    """Non-blocking: the dispatcher asks how many tries it may start and when to ask again."""

    def __init__(self, rate: Rate, clock: Clock) -> None:
        self.rate = rate
        self.clock = clock
        self._tokens = float(rate.burst)
        self._at = clock.now()

    def _refill(self) -> None:
        now = self.clock.now()
        if now > self._at:
            self._tokens = min(
                float(self.rate.burst), self._tokens + (now - self._at) * self.rate.per_second
            )
        self._at = max(self._at, now)

    def available(self) -> int:
        """Whole tokens that may be taken now."""
        self._refill()
        return int(self._tokens + 1e-9)

    def take(self, n: int = 1) -> None:
        """Use `n` tokens (the caller checked `available()`)."""
        self._refill()
        self._tokens -= n

    def wait_time(self) -> float:
        """Seconds until one whole token is available (0 when one is)."""
        self._refill()
        missing = 1.0 - self._tokens
        return max(0.0, missing / self.rate.per_second) if missing > 1e-9 else 0.0
