"""The contract between the delivery engine and destination plugins.

A destination type is a class registered with ``register_destinations``. It has an ``Options``
pydantic model; the engine creates one instance per configured destination::

    instance = DestinationType(name, options, services)
    outcome = await instance.deliver(delivery)

``deliver`` sends one delivery once and *classifies* what happened; it never retries or sleeps
(the engine owns the retry policy). It returns an `Outcome` or raises; an exception that is not
an `Outcome` is treated as a retryable failure with its text as the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    import httpx

    from gateway.clock import Clock
    from gateway.store import DeliveryRecord, Store


@dataclass(frozen=True)
class Outcome:
    """What one try achieved.

    kind: ``delivered``; ``retry`` (transient: timeouts, connection errors, 408/425/429/5xx,
    SMTP 4xx); ``permanent`` (dead at once: other 4xx, SMTP 5xx, a template that renders
    invalid JSON); ``throttled`` (429 or Slack ``ratelimited``: waits `retry_after` and does
    not use up ``retry.attempts``).
    """

    kind: str
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    #: Stop sending to this destination until an operator resumes it (HTTP 410).
    pause_destination: bool = False
    #: Extra facts for the attempt record (for example partly refused email recipients).
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def delivered(cls, status: int | None = None, **details: Any) -> Outcome:
        return cls("delivered", status, details=details)

    @classmethod
    def retry(
        cls, error: str, status: int | None = None, retry_after: float | None = None
    ) -> Outcome:
        return cls("retry", status, error, retry_after)

    @classmethod
    def permanent(cls, error: str, status: int | None = None, pause: bool = False) -> Outcome:
        return cls("permanent", status, error, pause_destination=pause)

    @classmethod
    def throttled(cls, error: str, retry_after: float | None, status: int | None = 429) -> Outcome:
        return cls("throttled", status, error, retry_after)


@dataclass
class Services:
    """What the gateway lends destinations: one shared HTTP client per process, the clock,
    the store (for marks such as Slack thread ids) and known secrets to scrub from errors."""

    http: httpx.AsyncClient
    clock: Clock
    store: Store
    secrets: set[str] = field(default_factory=set)


class Destination(Protocol):
    Options: ClassVar[type[BaseModel]]

    def __init__(self, name: str, options: Any, services: Services) -> None: ...

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        """Send `delivery` once and classify the result (see the module docstring)."""
        ...

    async def close(self) -> None:
        """Release resources (optional; the engine calls it if present)."""
        ...
