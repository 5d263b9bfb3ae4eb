"""The contract between the delivery engine and destination types.

A destination type is a class registered with ``register_destinations``. It has an ``Options``
pydantic model; the engine creates one instance per configured destination::

    instance = DestinationType(name, options, services)
    outcome = await instance.deliver(delivery)

``deliver`` sends one delivery once and *classifies* what happened; it never retries or sleeps
(the engine owns the retry policy). It returns an `Outcome`; an exception, or anything that is
not an `Outcome`, is treated as a retryable failure with its text as the error.

A type that sends many deliveries as one (an email digest) implements `BatchDestination`:
``batching`` (a `Batching`, or None to send one by one) and ``deliver_batch``.
HTTP destinations subclass `gateway.destination.http_destination.HTTPDestination`, which owns
the request, the timeout, ``Retry-After`` and the status classification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:
    import httpx

    from gateway.clock import Clock
    from gateway.store import DeliveryRecord
    from gateway.store.marks import Marks

#: What one try achieved (see `Outcome`).
OutcomeKind = Literal["delivered", "retry", "permanent", "throttled"]


@dataclass(frozen=True)
class Outcome:
    """What one try achieved.

    kind: ``delivered``; ``retry`` (transient: timeouts, connection errors, 408/425/429/5xx,
    SMTP 4xx); ``permanent`` (dead at once: other 4xx, SMTP 5xx, a template that renders
    invalid JSON); ``throttled`` (429 or Slack ``ratelimited``: waits `retry_after` and does
    not use up ``retry.attempts``).

    `details` are extra facts kept with the attempt record (``deliveries show``, the admin API):
    a JSON-serializable mapping, for example the recipients an SMTP server refused.
    """

    kind: OutcomeKind
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    #: Stop sending to this destination until an operator resumes it (HTTP 410).
    pause_destination: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def delivered(cls, status: int | None = None, **details: Any) -> Outcome:
        return cls("delivered", status, details=details)

    @classmethod
    def retry(
        cls,
        error: str,
        status: int | None = None,
        retry_after: float | None = None,
        **details: Any,
    ) -> Outcome:
        return cls("retry", status, error, retry_after, details=details)

    @classmethod
    def permanent(
        cls, error: str, status: int | None = None, pause: bool = False, **details: Any
    ) -> Outcome:
        return cls("permanent", status, error, pause_destination=pause, details=details)

    @classmethod
    def throttled(
        cls, error: str, retry_after: float | None, status: int | None = 429, **details: Any
    ) -> Outcome:
        return cls("throttled", status, error, retry_after, details=details)


@dataclass
class Services:
    """What the gateway lends destinations: the one shared HTTP client of the process, the
    clock, durable marks (small per-key state such as Slack thread ids; not the store), and the
    configuration's secrets, which the engine scrubs from errors (a destination that puts
    response text into an error may scrub more itself)."""

    http: httpx.AsyncClient
    clock: Clock
    marks: Marks | None
    secrets: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Batching:
    """How a `BatchDestination` wants its deliveries: the engine waits until the oldest pending
    one has waited `window` seconds or `max_events` are pending, then hands over up to
    `max_events` at once."""

    window: float
    max_events: int


class Destination(Protocol):
    """A destination type (see the module docstring)."""

    Options: ClassVar[type[BaseModel]]

    def __init__(self, name: str, options: Any, services: Services) -> None: ...

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        """Send `delivery` once and classify the result."""
        ...


@runtime_checkable
class BatchDestination(Protocol):
    """A destination that can send several deliveries as one. When ``batching`` is not None the
    engine calls only ``deliver_batch``; its one outcome is recorded for every delivery in the
    batch, each through the normal retry policy. Nothing waits in memory between windows."""

    batching: Batching | None

    async def deliver_batch(self, deliveries: list[DeliveryRecord]) -> Outcome: ...


@runtime_checkable
class Closable(Protocol):
    """A destination holding resources of its own; the engine calls ``close`` when it stops."""

    async def close(self) -> None: ...
