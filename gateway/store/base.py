"""The store interface: events, dedupe keys, quarantine, deliveries and attempts.

Every backend (`sqlite`, `redis`) implements `Store` and passes the same contract
tests (``tests/test_store_contract.py``). All methods are coroutines and all times are epoch
seconds passed in by the caller (the caller owns the clock).

States:
  events      received -> routed | unmatched | filtered        (router)
              quarantined -> received (replay runs it through today's chain)
  deliveries  pending -> in_flight -> delivered | pending (retry) | dead
              dead/delivered -> pending (replay; same delivery id)
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_STATES = ("received", "routed", "unmatched", "filtered", "quarantined")
DELIVERY_STATES = ("pending", "in_flight", "delivered", "dead")

#: Mark scopes (see `Store.set_mark`). ``plugin`` marks are lent to plugins and forgotten after
#: `RetentionPolicy.marks`; ``gateway`` marks are the gateway's own state (destination pauses,
#: the silence alarm, the retention schedule), never purged and never reachable by a plugin.
MARK_SCOPES = ("plugin", "gateway")

#: The kinds a retention pass counts, in the order `purge` reports them.
PURGE_KINDS = (
    "events",
    "quarantined",
    "delivered",
    "dead",
    "attempts",
    "dedupe_keys",
    "marks",
)


@dataclass(frozen=True)
class IncomingEvent:
    """One element of a request body, checked by its source format, ready to commit."""

    raw: str
    dedupe_key: str
    message_uuid: str | None = None
    event: str | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    #: Ids of the events stored by this call (accepted and quarantined), in body order.
    event_ids: tuple[str, ...] = ()
    #: Per item, in the order given: ``accepted``, ``duplicate`` or ``quarantined``.
    outcomes: tuple[str, ...] = ()


@dataclass
class EventRecord:
    id: str
    source: str
    received_at: float
    raw: str
    state: str
    message_uuid: str | None = None
    event: str | None = None
    reason: str | None = None
    route_attempts: int = 0
    next_route_at: float = 0.0
    recheck: bool = False

    @property
    def payload(self) -> Any:
        return json.loads(self.raw)

    def as_dict(self) -> dict[str, Any]:
        """The listing shape (``quarantine list --json``, ``/admin/quarantine``)."""
        return {
            "id": self.id,
            "source": self.source,
            "received_at": self.received_at,
            "reason": self.reason,
            "message_uuid": self.message_uuid,
            "event": self.payload,
        }


@dataclass(frozen=True)
class NewDelivery:
    id: str
    event_id: str
    route: str
    destination: str
    next_attempt_at: float
    enrichment: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeliveryRecord:
    id: str
    event_id: str
    source: str
    route: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: float
    created_at: float
    updated_at: float
    first_attempt_at: float | None = None
    last_error: str | None = None
    last_status: int | None = None
    message_uuid: str | None = None
    enrichment: dict[str, Any] = field(default_factory=dict)
    raw: str = ""
    received_at: float = 0.0
    lease_until: float | None = None

    @property
    def event(self) -> Any:
        return json.loads(self.raw)

    def as_dict(self) -> dict[str, Any]:
        """The listing shape (`--json`): no event body, no secrets."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "source": self.source,
            "destination": self.destination,
            "route": self.route,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "message_uuid": self.message_uuid,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class AttemptRecord:
    """One try. `outcome`: delivered, retry, dead, released (shutdown), throttled (429)."""

    started_at: float
    finished_at: float
    outcome: str
    status: int | None = None
    error: str | None = None
    number: int = 0
    #: The destination's `Outcome.details` (JSON-serializable), for example refused recipients.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryFilter:
    state: str | None = None
    destination: str | None = None
    message_uuid: str | None = None
    since: float | None = None
    limit: int = 1000


@dataclass(frozen=True)
class DeliveryPage:
    """One page of deliveries, newest first by ``(created_at, id)``, read by keyset: `before`
    is the ``(created_at, id)`` of the last row of the previous page (rows strictly after it in
    this order follow), never an offset. `since` (inclusive) and `until` (exclusive) bound
    ``created_at``."""

    state: str | None = None
    destination: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class SourceActivity:
    """What `Store.source_activity` says about one source."""

    source: str
    #: ``received_at`` of its latest stored event (any state), or None.
    last_received_at: float | None
    #: Events stored (accepted or quarantined) at or after the `since` asked for.
    received: int
    #: Events of the source now in quarantine.
    quarantined: int


#: `Store.source_activity` and `Store.delivered_since` answer exactly for a `since` no older
#: than this many seconds before the newest write; backends may forget older detail.
ACTIVITY_WINDOW = 3600.0


@dataclass(frozen=True)
class Lease:
    """Events ingested with a lease are already claimed by `owner` until `until`: the
    process that received them routes them from memory, and no other process claims them
    before the lease expires (after a crash, any process does)."""

    owner: str
    until: float


@dataclass(frozen=True)
class FinishedEvent:
    """The router's verdict on one claimed event, for `Store.finish_events`."""

    event_id: str
    state: str
    deliveries: list[NewDelivery]
    now: float
    reason: str | None = None


@dataclass(frozen=True)
class Footprint:
    """Space a store takes (`Store.footprint`); None where a backend cannot tell."""

    #: Bytes the store's data takes: SQLite's files (database and WAL), Redis's used memory.
    bytes: int | None = None
    #: Bytes free on the filesystem holding the store (SQLite only).
    free_bytes: int | None = None


@dataclass(frozen=True)
class RetentionPolicy:
    """What a retention pass (`Store.purge`) keeps, in seconds, and how much one step removes.

    - `delivered` / `dead`: a delivery in that state goes (with its attempts) once its last
      change (``updated_at``) is older than this. Pending and in-flight deliveries never go.
    - `events`: an event that finished routing (``routed``, ``unmatched``, ``filtered``) goes
      once it was received longer ago than this AND no delivery of it is left. ``received``
      events (still to be routed) never go.
    - `quarantined`: a quarantined event goes once it was quarantined (``updated_at``) longer
      ago than this (and no delivery of it is left).
    - `dedupe`: a dedupe key goes once first seen longer ago than this, whether or not its
      event is still stored (a resend of a purged event within the window is a duplicate).
    - `marks`: a ``plugin``-scope mark goes once unwritten for this long. ``gateway``-scope
      marks never go.
    - `batch`: at most this many rows of one kind per transaction (or script call), so other
      writers (intake) get their turn between steps.
    - `duty`: the share of a pass's wall time spent in steps (1.0: back to back). After a step
      that took d seconds the pass rests d * (1 / duty - 1), so a pass that removes millions of
      rows leaves the store, and the CPU, to intake most of the time (`Pacer`).
    """

    dedupe: float
    events: float
    delivered: float
    dead: float
    quarantined: float
    marks: float
    batch: int = 1000
    duty: float = 1.0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if not 0.0 < self.duty <= 1.0:
            raise ValueError("duty must be in (0, 1]")


class Pacer:
    """Runs a pass's steps at `RetentionPolicy.duty`: ``await pacer(step())`` returns the step's
    result after resting in proportion to how long the step took."""

    def __init__(self, policy: RetentionPolicy) -> None:
        self.rest = 1.0 / policy.duty - 1.0

    async def __call__(self, step: Awaitable[T]) -> T:
        started = time.monotonic()
        result = await step
        if self.rest > 0:
            await asyncio.sleep((time.monotonic() - started) * self.rest)
        return result


class Store(abc.ABC):
    """What the gateway needs from durable storage. See the module docstring for states."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema; start background machinery."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending commits and release resources. Safe to call twice."""

    async def adopt_owner(self, owner: str, now: float) -> int:
        """Make `owner` this process's lease owner for as long as the store is open, and free
        the leases of owners proven dead (an earlier process with the same id included), so
        that a restarted gateway resumes their work at once instead of when the leases expire;
        never those of a live owner. Call after `open`, before claiming anything. Returns how
        many events and deliveries were freed. This default proves nothing and frees nothing:
        leases expire."""
        return 0

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise `StoreError` unless the store can serve reads and writes."""

    def watch(self, on_work: Callable[[str, str | None], None]) -> bool:
        """Ask to be told about work that other processes create: ``on_work("events", None)``
        when events wait for any router, ``on_work("deliveries", destination)`` when
        deliveries of `destination` (None: of any) may be due. Called on the event loop of
        `open`, never for this store's own writes. Returns whether the store can tell; the
        default cannot (False), and callers keep polling often."""
        return False

    # -- intake -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def ingest(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None = None
    ) -> IngestResult:
        """Commit `items` durably and atomically, dropping duplicates by `(source, dedupe_key)`.

        Valid items become ``received`` events, items with problems ``quarantined`` ones (their
        problems are the reason). Returns only after the commit is durable; raises `StoreError`
        when it is not (nothing of this call is then stored). Concurrent calls with the same key
        store it once. With a `lease`, the new ``received`` events are stored as claimed by
        ``lease.owner`` until ``lease.until`` (see `claim_events`).
        """

    def start_ingest(
        self, source: str, items: list[IncomingEvent], now: float, lease: Lease | None = None
    ) -> asyncio.Future[IngestResult]:
        """`ingest`, started now, as a future: intake waits on it through a future of its
        own, so a request cancelled meanwhile (a client that hung up) does not cancel the
        commit. The default runs `ingest` in a task; a store whose commits are futures already
        returns its own, for less work per request. Raises `StoreError` (at once or through the
        future) as `ingest` does."""
        return asyncio.get_running_loop().create_task(self.ingest(source, items, now, lease))

    # -- router ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_events(
        self, owner: str, limit: int, lease: float, now: float
    ) -> list[EventRecord]:
        """Lease up to `limit` ``received`` events that are due, oldest first."""

    @abc.abstractmethod
    async def finish_event(
        self,
        event_id: str,
        state: str,
        deliveries: list[NewDelivery],
        now: float,
        reason: str | None = None,
    ) -> None:
        """Set the event's state and create its deliveries in one transaction. Does nothing if
        the event is no longer ``received`` (another process finished it first)."""

    async def finish_events(self, finished: list[FinishedEvent]) -> None:
        """`finish_event` for several events; each one is atomic on its own. Backends that can
        commit them together override this."""
        for f in finished:
            await self.finish_event(f.event_id, f.state, f.deliveries, f.now, f.reason)

    @abc.abstractmethod
    async def hold_event(self, event_id: str, reason: str, retry_at: float, now: float) -> None:
        """Keep the event ``received`` (a plugin failed), to be tried again at `retry_at`."""

    @abc.abstractmethod
    async def quarantine_event(self, event_id: str, reason: str, now: float) -> None:
        """Move an event to quarantine (it failed today's format check on replay)."""

    # -- delivery ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_deliveries(
        self, owner: str, destination: str, limit: int, lease: float, now: float
    ) -> list[DeliveryRecord]:
        """Lease up to `limit` due deliveries of `destination` (pending and due, or in flight
        with an expired lease), earliest first, and mark them ``in_flight``."""

    @abc.abstractmethod
    async def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        state: str,
        next_attempt_at: float | None,
        counts: bool,
        now: float,
    ) -> None:
        """Record `attempt` and move the delivery to `state` (``delivered``, ``pending`` with
        `next_attempt_at`, or ``dead``). `counts` is False for tries that do not use up
        ``retry.attempts`` (429, release at shutdown)."""

    @abc.abstractmethod
    async def release(self, delivery_ids: list[str], now: float) -> None:
        """Give leased deliveries back as ``pending`` and due now, without counting a try."""

    @abc.abstractmethod
    async def next_due(self, destination: str | None = None) -> float | None:
        """The earliest time a delivery of `destination` (or any) becomes claimable."""

    @abc.abstractmethod
    async def has_due_events(self, now: float) -> float | None:
        """The earliest time a ``received`` event becomes claimable, or None."""

    # -- inspection and repair -----------------------------------------------------------------
    @abc.abstractmethod
    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRecord]: ...

    @abc.abstractmethod
    async def get_delivery(
        self, delivery_id: str
    ) -> tuple[DeliveryRecord, list[AttemptRecord]] | None: ...

    @abc.abstractmethod
    async def replay_deliveries(
        self, ids: list[str] | None, flt: DeliveryFilter | None, now: float
    ) -> list[str]:
        """Put deliveries back in the queue (same ids, attempt count and age reset, history
        kept). Returns the ids replayed."""

    @abc.abstractmethod
    async def list_events(self, state: str, limit: int = 1000) -> list[EventRecord]: ...

    @abc.abstractmethod
    async def get_event(self, event_id: str) -> EventRecord | None: ...

    @abc.abstractmethod
    async def replay_quarantined(self, ids: list[str] | None, now: float) -> list[str]:
        """Send quarantined events (all, or `ids`) back to the router, to be checked again."""

    # -- the console's reads (all answered through indexes, fast on a store of millions) ----------
    @abc.abstractmethod
    async def message_events(self, message_uuid: str, limit: int = 500) -> list[EventRecord]:
        """Events (every state, quarantined ones included) carrying `message_uuid`, oldest
        first by ``(received_at, id)``, at most `limit`. Their ``state`` and ``reason`` are the
        routing decision (``routed`` with the routes that suppressed it, ``unmatched``,
        ``filtered`` with why, ``quarantined`` with the problems, ``received`` = not yet)."""

    @abc.abstractmethod
    async def page_deliveries(self, page: DeliveryPage) -> list[DeliveryRecord]:
        """Up to ``page.limit`` deliveries matching `page`, newest first (see `DeliveryPage`).
        The cost depends on the page size, not on how many deliveries are stored."""

    @abc.abstractmethod
    async def source_activity(self, sources: list[str], since: float) -> list[SourceActivity]:
        """One `SourceActivity` per name in `sources`, in that order (zeros for a source with
        no events). `since` within `ACTIVITY_WINDOW` of now."""

    @abc.abstractmethod
    async def delivered_since(self, destinations: list[str], since: float) -> dict[str, int]:
        """Per name in `destinations`: deliveries that became ``delivered`` at or after `since`
        (by their finishing time); a delivery purged since may still count. `since` within
        `ACTIVITY_WINDOW`."""

    @abc.abstractmethod
    async def recent_errors(self, limit: int = 20) -> list[DeliveryRecord]:
        """Deliveries whose latest attempt failed (``last_error`` set; pending, in flight or
        dead), the most recently failed first, at most `limit`."""

    async def queue_figures(self, cap: int) -> list[dict[str, Any]]:
        """`queue_stats` for pages that must stay fast on any backlog: the same rows, where a
        backend may stop counting at `cap` (``"count"`` is then `cap` and ``"capped"`` True;
        otherwise ``"capped"`` is False). This default counts exactly."""
        return [{**row, "capped": False} for row in await self.queue_stats(0.0)]

    # -- retention ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def purge(self, policy: RetentionPolicy, now: float) -> dict[str, int]:
        """One retention pass: remove what `policy` no longer keeps (see `RetentionPolicy` for
        each kind's rule; every cutoff is ``now`` minus the kind's window).

        Works in steps of at most ``policy.batch`` rows of a kind, each its own transaction
        (or script call), until nothing more qualifies, so concurrent writers are never held up
        for long. Safe while other processes use the store, and when several processes purge
        at once (a row is counted by the process that removed it). Never removes a pending or
        in-flight delivery, an event with a delivery left, a ``received`` event, or a
        ``gateway``-scope mark.

        Returns a count for every kind in `PURGE_KINDS` (zeros included): ``events`` (routed,
        unmatched or filtered events), ``quarantined`` (quarantined events), ``delivered`` and
        ``dead`` (deliveries), ``attempts`` (attempt records of those deliveries),
        ``dedupe_keys``, ``marks``.
        """

    async def reclaim(self) -> None:
        """Give storage freed by `purge` back for reuse (SQLite: incremental vacuum and a WAL
        checkpoint). Called after each scheduled pass; the default does nothing, for backends
        whose server does it by itself."""
        return None

    async def footprint(self) -> Footprint:
        """How much space the store takes, for the metrics gauges; the default knows nothing."""
        return Footprint()

    # -- marks: small durable per-key state (ordering, threads, pauses, alarms) ---------------
    #
    # Every mark lives in a scope (`MARK_SCOPES`): the same key in two scopes names two
    # different marks. ``plugin`` (the default) is what plugins see and what `purge` forgets
    # after ``policy.marks``; ``gateway`` holds the gateway's own state and is never purged.
    @abc.abstractmethod
    async def advance_mark(
        self, key: str, rank: str, value: str, now: float, *, scope: str = "plugin"
    ) -> tuple[bool, str | None]:
        """Atomically store (`rank`, `value`) under `key` in `scope` if the key is new or its
        stored rank sorts strictly below `rank` (byte order). Returns (advanced, previous
        value)."""

    @abc.abstractmethod
    async def get_mark(self, key: str, *, scope: str = "plugin") -> tuple[str, str] | None:
        """(rank, value) stored under `key` in `scope`, or None."""

    @abc.abstractmethod
    async def set_mark(
        self, key: str, value: str | None, now: float, rank: str = "", *, scope: str = "plugin"
    ) -> None:
        """Store `value` under `key` in `scope` unconditionally; None deletes the key. Writing
        counts as a use: a ``plugin`` mark's retention starts again at `now`."""

    @abc.abstractmethod
    async def queue_stats(self, now: float) -> list[dict[str, Any]]:
        """Per destination and state (``pending``, ``in_flight``, ``dead``): ``{"destination",
        "state", "count", "oldest"}`` where ``oldest`` is the earliest ``created_at`` (or None).
        Cheap enough to call on every metrics scrape."""

    async def count_events(self, state: str) -> int:
        """How many events are in `state`; backends answer through an index of that state
        (cheap for ``quarantined``, which the metrics read on every scrape). The default
        counts everything through `counts`."""
        return (await self.counts())["events"].get(state, 0)

    @abc.abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]:
        """``{"events": {state: n}, "deliveries": {state: n}}``."""
