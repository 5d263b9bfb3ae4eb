"""gateway.ops.metrics: the hot paths' summed counts and timings (`Metrics.count`,
`Metrics.observe`) reach prometheus-client exactly as one update per value would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.ops import metrics as metrics_module
from gateway.ops.metrics import FAST, PREFIX, SLOW, Metrics

# Values on and around every bound, below the first, above the last, zero and a negative one.
VALUES = [
    *FAST,
    *(b * 0.999 for b in FAST),
    *(b * 1.001 for b in FAST),
    *SLOW,
    *(b * 1.5 for b in SLOW),
    0.0,
    -0.25,
    1e9,
]


NAMES = ("ack_seconds", "attempt_seconds", "store_commit_seconds", "requests")


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the `NAMES` families by name and labels (creation times left out)."""
    found = {}
    for family in registry.collect():
        if family.name.removeprefix(f"{PREFIX}_") not in NAMES:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def reference(values: list[float]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What prometheus-client reports after one plain update per value."""
    registry = CollectorRegistry()
    ack = Histogram(
        f"{PREFIX}_ack_seconds", "x", ["source"], buckets=FAST, registry=registry
    ).labels("revicom")
    attempt = Histogram(
        f"{PREFIX}_attempt_seconds", "x", ["destination"], buckets=SLOW, registry=registry
    ).labels("ops")
    commit = Histogram(f"{PREFIX}_store_commit_seconds", "x", [], buckets=FAST, registry=registry)
    requests = Counter(f"{PREFIX}_requests", "x", ["source", "status"], registry=registry)
    for v in values:
        ack.observe(v)
        attempt.observe(v)
        commit.observe(v)
        requests.labels("revicom", "200").inc()
    requests.labels("revicom", "401").inc(3)
    return samples(registry)


def ours(m: Metrics, values: list[float]) -> None:
    for v in values:
        m.observe("ack_seconds", ("revicom",), v)
        m.observe("attempt_seconds", ("ops",), v)
        m.observe("commit_seconds", (), v)
        m.count("requests", ("revicom", "200"))
    m.count("requests", ("revicom", "401"), 3)


def test_summed_values_equal_one_update_per_value_off_the_loop() -> None:
    m = Metrics()
    ours(m, VALUES)  # no event loop: each update is added at once
    assert samples(m.registry) == reference(VALUES)


def test_on_the_loop_values_wait_for_the_flush_then_equal_one_update_per_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = Metrics()
    empty = samples(m.registry)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers: list[tuple[Any, ...]] = []
        # The flush timer, caught instead of waited for: no sleeping in tests.
        monkeypatch.setattr(loop, "call_later", lambda d, fn, *a: timers.append((d, fn, *a)))
        ours(m, VALUES)
        assert [d for d, *_ in timers] == [metrics_module.FLUSH_DELAY]  # one timer for all
        assert samples(m.registry) == empty  # nothing added yet (read without a flush)
        _, fn, *args = timers[0]
        fn(*args)

    asyncio.run(main())
    assert samples(m.registry) == reference(VALUES)


def test_a_scrape_adds_what_waits_first() -> None:
    m = Metrics()

    async def main() -> bytes:
        m.count("requests", ("revicom", "200"), 2)
        m.observe("ack_seconds", ("revicom",), 0.003)
        return await m.render()

    text = asyncio.run(main()).decode()
    assert f'{PREFIX}_requests_total{{source="revicom",status="200"}} 2.0' in text
    assert f'{PREFIX}_ack_seconds_bucket{{le="0.005",source="revicom"}} 1.0' in text
    assert f'{PREFIX}_ack_seconds_count{{source="revicom"}} 1.0' in text
