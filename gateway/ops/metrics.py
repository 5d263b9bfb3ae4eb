"""Prometheus metrics (prefix ``callback_gateway_``), one `Metrics` object per process.

With several Sanic workers, ``run`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start and
every worker writes its counters there (prometheus-client's multiprocess mode); ``/metrics`` in any
worker then reports the sum. The store's gauges (queues, quarantine, size on disk, free space)
are read from the store, at most once per `STORE_TTL`, so they are the same whichever worker
answers.

The hot paths (every request, event and delivery attempt) do not update prometheus-client's
metrics one by one: `Metrics.count` and `Metrics.observe` sum into plain dictionaries on the
event loop, and `Metrics.flush` adds the sums at most `FLUSH_DELAY` seconds later, and before
every scrape. prometheus-client takes a lock and walks the buckets on every update; summed, a
request's four updates cost about a quarter as much. A scrape of the worker that counted sees
every count; with several workers, another worker's counts show up to `FLUSH_DELAY` late.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

PREFIX = "callback_gateway"
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Seconds one reading of the store's gauges serves scrapes for.
STORE_TTL = 2.0
SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds the hot paths' counts and timings are summed before they reach prometheus-client.
FLUSH_DELAY = 1.0

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric the gateway exports. See docs/operations.md for what each one means."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        reg: Any = None if self.multiprocess else self.registry

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=reg)

        def histogram(
            name: str, doc: str, labels: list[str], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=reg)

        self.requests = counter(
            "requests", "HTTP requests to sources by answer status", ["source", "status"]
        )
        self.callbacks = counter(
            "callbacks",
            "Callback elements received, by outcome (accepted, duplicate, quarantined, rejected)",
            ["source", "event", "outcome"],
        )
        self.ack_seconds = histogram(
            "ack_seconds",
            "Time from request to the 2xx answer (includes the commit)",
            ["source"],
            FAST,
        )
        self.commit_seconds = histogram(
            "store_commit_seconds", "Time an intake waited for its group commit", [], FAST
        )
        self.events = counter(
            "events_routed",
            "Events leaving the router: routed, unmatched, filtered, held (plugin error),"
            " quarantined (failed today's check on replay)",
            ["source", "state"],
        )
        self.deliveries = counter(
            "deliveries",
            "Delivery attempts by outcome: delivered, retry, throttled, dead, released",
            ["destination", "outcome"],
        )
        self.attempt_seconds = histogram(
            "attempt_seconds", "Duration of one delivery attempt", ["destination"], SLOW
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._counts: dict[tuple[str, tuple[str, ...]], float] = {}
        self._timings: dict[tuple[str, tuple[str, ...]], _Tally] = {}
        self._flush_due = False
        self._store: Any = None
        self._clock: Any = None
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None
        self._reading = asyncio.Lock()

    def child(self, metric: str, *labels: str) -> Any:
        """``self.<metric>.labels(*labels)``, looked up once: prometheus-client's ``labels()``
        takes a lock and builds a key on every call, and the hot paths count every request,
        event and delivery. Callers bound the label values (see `gateway.intake.endpoint`)."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            metric_obj = getattr(self, metric)
            found = self._children[key] = metric_obj.labels(*labels) if labels else metric_obj
        return found

    def count(self, metric: str, labels: tuple[str, ...], n: float = 1) -> None:
        """Add `n` to counter `metric` (its child `labels`) at the next `flush`. For the event
        loop's thread: the sums are plain dictionaries."""
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + n
        if not self._flush_due:
            self._schedule_flush()

    def observe(self, metric: str, labels: tuple[str, ...], value: float) -> None:
        """Observe `value` in histogram `metric` (its child `labels`) at the next `flush`.
        For the event loop's thread, like `count`."""
        key = (metric, labels)
        tally = self._timings.get(key)
        if tally is None:
            tally = self._timings[key] = _Tally(getattr(self, metric))
        tally.counts[bisect_left(tally.bounds, value)] += 1
        tally.total += value
        if not self._flush_due:
            self._schedule_flush()

    def flush(self) -> None:
        """Add every sum `count` and `observe` hold to prometheus-client's metrics. Runs on a
        timer, before every scrape and at `Gateway.close`, so sums left by an event loop that
        ended before its timer fired still arrive."""
        self._flush_due = False
        counts, self._counts = self._counts, {}
        timings, self._timings = self._timings, {}
        for (metric, labels), n in counts.items():
            self.child(metric, *labels).inc(n)
        for (metric, labels), tally in timings.items():
            tally.add_to(self.child(metric, *labels))

    def _schedule_flush(self) -> None:
        loop = asyncio._get_running_loop()
        if loop is None:  # not on an event loop (a command, a test): nothing to wait for
            self.flush()
            return
        self._flush_due = True
        loop.call_later(FLUSH_DELAY, self.flush)

    def watch_store(self, store: Any, clock: Any) -> None:
        """Report queue depth, oldest pending age, quarantine and the store's size from
        `store` (see `_store_families`)."""
        self._store, self._clock = store, clock
        self._cached = None

    async def render(self) -> bytes:
        """The exposition text for one scrape."""
        self.flush()
        registry = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        families = await self._store_families()
        body = generate_latest(registry)
        if families:
            extra = CollectorRegistry()
            extra.register(_Static(families))
            body += generate_latest(extra)
        return body

    async def _store_families(self) -> list[GaugeMetricFamily]:
        """The store's gauges, read at most once per `STORE_TTL` seconds: scrapes in between
        (several Prometheus servers, a dashboard refreshing) share one reading, and concurrent
        scrapes wait for the same one. Every reading goes through indexes whose size is the
        queue's, the dead letters' and the quarantine's, never the number of events stored."""
        if self._store is None:
            return []
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < STORE_TTL:
            return self._cached[1]
        async with self._reading:
            if self._cached is not None and time.monotonic() - self._cached[0] < STORE_TTL:
                return self._cached[1]
            families = await self._read_store()
            self._cached = (time.monotonic(), families)
            return families

    async def _read_store(self) -> list[GaugeMetricFamily]:
        now = self._clock.now()
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Deliveries by destination and state (pending, in_flight, dead)",
            labels=["destination", "state"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_oldest_pending_seconds",
            "Age of the oldest delivery not yet delivered (pending or in flight)",
            labels=["destination"],
        )
        ages: dict[str, float] = {}
        for row in await self._store.queue_stats(now):
            depth.add_metric([row["destination"], row["state"]], row["count"])
            if row["state"] != "dead" and row["oldest"] is not None:
                age = max(0.0, now - row["oldest"])
                ages[row["destination"]] = max(age, ages.get(row["destination"], 0.0))
        for destination, age in sorted(ages.items()):
            oldest.add_metric([destination], age)
        quarantined = GaugeMetricFamily(f"{PREFIX}_quarantined_events", "Events held in quarantine")
        quarantined.add_metric([], await self._store.count_events("quarantined"))
        families = [depth, oldest, quarantined]
        space = await self._store.footprint()
        if space.bytes is not None:
            size = GaugeMetricFamily(
                f"{PREFIX}_store_bytes",
                "Bytes the store takes: SQLite's database and WAL files, PostgreSQL's tables"
                " with their indexes, Redis's used_memory",
            )
            size.add_metric([], space.bytes)
            families.append(size)
        if space.free_bytes is not None:
            free = GaugeMetricFamily(
                f"{PREFIX}_store_free_bytes",
                "Bytes free (for unprivileged users) on the filesystem holding the SQLite store",
            )
            free.add_metric([], space.free_bytes)
            families.append(free)
        return families


class _Tally:
    """Observations of one histogram child not yet added to it: a count per bucket (the first
    bound at least the value, as prometheus-client's ``observe`` picks) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, histogram: Any) -> None:
        """`histogram`: the ``Histogram`` (or one of its children) whose bounds to use."""
        self.bounds = tuple(histogram._upper_bounds)  # +Inf last
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def add_to(self, histogram: Any) -> None:
        """Add to a prometheus-client ``Histogram`` child what ``observe`` would have, one
        locked addition per bucket instead of per observation. These (and the bounds) are
        prometheus-client's internal values; tests/test_metrics_tally.py compares the result
        with ``observe`` called once per value, so a release that changes them fails there."""
        histogram._sum.inc(self.total)
        for bucket, n in zip(histogram._buckets, self.counts, strict=True):
            if n:
                bucket.inc(n)


class _Static:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families
