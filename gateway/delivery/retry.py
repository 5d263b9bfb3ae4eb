"""The retry policy: the one place that decides what happens after a try.

tenacity supplies the pieces (``stop_after_attempt | stop_after_delay`` and exponential waits with
jitter), evaluated against a `tenacity.RetryCallState` built from the delivery's durable record
rather than from an in-memory loop, because our retries outlive the process: the next attempt
time is persisted (``Store.finish_attempt(next_attempt_at=...)``) and any worker may make it.

Rules (``retry:`` in the config; ``docs/configuration.md`` states them for users):

- ``attempts`` is the total number of counted tries: 3 means at most three requests.
- Waits grow exponentially from ``initial``, capped at ``max_interval``, and are jittered
  *downwards* by up to 25% (wait in ``[0.75*b, b]`` where ``b = min(max_interval,
  initial * 2**(n-1))``), so deliveries that failed together do not retry in lockstep and no wait
  ever exceeds ``max_interval``.
- ``max_age`` is measured from the delivery's first try (not its creation), so a backlog that
  built up while a destination was paused or the gateway was down is not killed untried.
  A scheduled retry never lands beyond ``first try + max_age``: a backoff wait is shortened to the
  deadline (one last try there), a ``Retry-After`` that points past it makes the delivery dead.
- ``Retry-After`` (on a 429, or on a retryable answer such as 503) is honoured as given, even
  above ``max_interval``.
- ``throttled`` (429) does not count toward ``attempts`` but ages the delivery like any try.
  Without ``Retry-After`` its wait is the larger of the backoff and the delivery's age so far
  (capped at ``max_interval``), so a destination that keeps throttling is asked less and less
  often even though the try counter does not move.
- ``permanent`` outcomes are dead at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

from gateway.config.models import RetryConfig
from gateway.destination.base import Outcome
from gateway.store import DeliveryRecord

#: Fraction of each backoff wait that is random (taken off the top).
JITTER = 0.25


@dataclass(frozen=True)
class Decision:
    """What to record after one try.

    state: the delivery's new state (``delivered``, ``pending``, ``dead``).
    attempt_outcome: the attempt record's outcome (``delivered``, ``retry``, ``throttled``,
    ``dead``). next_attempt_at: when ``pending``, the persisted time of the next try.
    counts: whether this try uses up one of ``retry.attempts``.
    """

    state: str
    attempt_outcome: str
    next_attempt_at: float | None
    counts: bool
    error: str | None


class RetryPolicy:
    """`decide()` turns one try's `Outcome` into a `Decision` for a destination's `RetryConfig`."""

    def __init__(self, config: RetryConfig) -> None:
        self.config = config
        self.stop = tenacity.stop_after_attempt(config.attempts) | tenacity.stop_after_delay(
            config.max_age
        )
        fixed, rand = 1.0 - JITTER, JITTER
        self.wait = tenacity.wait_exponential(
            multiplier=config.initial * fixed, max=config.max_interval * fixed
        ) + tenacity.wait_random_exponential(
            multiplier=config.initial * rand, max=config.max_interval * rand
        )

    def backoff(self, tries: int) -> float:
        """The jittered wait after the `tries`-th counted failure (tries >= 1)."""
        return float(self.wait(self._state(tries, 0.0, 0.0)))

    def decide(
        self, delivery: DeliveryRecord, outcome: Outcome, started_at: float, now: float
    ) -> Decision:
        """The decision after `delivery` (as claimed, before this try) got `outcome`.

        `started_at` is when this try began, `now` when it ended (both epoch seconds).
        """
        if outcome.kind == "delivered":
            # A delivered try can still carry a note (for example email recipients refused
            # while others accepted); it is kept in the attempt record.
            return Decision("delivered", "delivered", None, True, outcome.error)
        error = outcome.error or f"{outcome.kind} (status {outcome.status})"
        if outcome.kind == "permanent":
            return Decision("dead", "dead", None, True, error)
        counts = outcome.kind != "throttled"
        label = "retry" if counts else "throttled"
        tries = delivery.attempts + (1 if counts else 0)
        first = delivery.first_attempt_at if delivery.first_attempt_at is not None else started_at
        state = self._state(tries, first, now)
        if self.stop(state):
            why = (
                f"gave up after {tries} tries"
                if tries >= self.config.attempts
                else f"gave up: max_age {self.config.max_age:g}s reached"
            )
            return Decision("dead", "dead", None, counts, f"{error} ({why})")
        age = now - first
        if outcome.retry_after is not None:
            wait = outcome.retry_after
            if age + wait > self.config.max_age:
                return Decision(
                    "dead",
                    "dead",
                    None,
                    counts,
                    f"{error} (gave up: Retry-After {wait:g}s would pass max_age"
                    f" {self.config.max_age:g}s)",
                )
        else:
            state.attempt_number = max(1, tries)
            wait = float(self.wait(state))
            if not counts:
                wait = max(wait, min(age, self.config.max_interval))
            wait = min(wait, self.config.max_age - age)
        return Decision("pending", label, now + wait, counts, error)

    @staticmethod
    def _state(tries: int, first: float, now: float) -> tenacity.RetryCallState:
        # A RetryCallState rebuilt from the durable record: epoch times instead of monotonic
        # ones are fine because tenacity only subtracts them.
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = tries
        state.start_time = first
        state.outcome_timestamp = now
        return state
