"""Fresh events handed from intake to the router in memory, and what happens when they are not.

Intake commits fresh events leased to its own process and hands them to the router; the store
stays the source of truth for everything else. These tests drive the router step by step with
a manual clock against a real SQLite store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from gateway_plugins.json_format import JsonFormat
from manual_clock import ManualClock

from gateway.config import load_config_text
from gateway.config.models import SourceConfig
from gateway.errors import StoreError
from gateway.intake import endpoint as intake
from gateway.intake.endpoint import SourceEndpoint
from gateway.routing import router as router_module
from gateway.routing.chain import Chain
from gateway.routing.router import Router
from gateway.store import (
    DeliveryFilter,
    EventRecord,
    IncomingEvent,
    IngestResult,
    Lease,
    Store,
    store_from_url,
)

CONFIG = """
store: sqlite:///gw.db
sources:
  provider: {path: /cb, format: json, options: {required: [/id]}}
destinations:
  archive: {type: file, path: out.jsonl}
routes:
  - name: all
    to: [archive]
"""
LEASE = 30.0  # the default delivery.lease


@pytest.fixture
async def store(tmp_path: Path):
    s = store_from_url("sqlite:///gw.db", tmp_path)
    await s.open()
    yield s
    await s.close()


def make_router(store: Store, clock: ManualClock) -> Router:
    cfg = load_config_text(CONFIG, {})
    return Router(cfg, store, Chain(cfg, store, clock), clock, "me")


async def commit_leased(
    store: Store, clock: ManualClock, *ids: int, lease_for: float = LEASE
) -> tuple[list[tuple[EventRecord, Any]], Lease]:
    """What intake does: commit leased to "me", return the fresh events and the lease."""
    lease = Lease("me", clock.now() + lease_for)
    elements = [{"id": i} for i in ids]
    items = [IncomingEvent(json.dumps(e), f"k{e['id']}") for e in elements]
    result = await store.ingest("provider", items, clock.now(), lease)
    fresh = [
        (EventRecord(eid, "provider", clock.now(), item.raw, "received"), element)
        for eid, item, element in zip(result.event_ids, items, elements, strict=True)
    ]
    return fresh, lease


async def states(store: Store, fresh: list[tuple[EventRecord, Any]]) -> list[str]:
    return [(await store.get_event(e.id)).state for e, _ in fresh]  # type: ignore[union-attr]


async def test_handed_over_events_are_routed_from_memory(store: Store) -> None:
    clock = ManualClock()
    router = make_router(store, clock)
    fresh, lease = await commit_leased(store, clock, 1, 2, 3)
    router.take(fresh, lease)
    await router.route_due()
    assert await states(store, fresh) == ["routed"] * 3
    deliveries = await store.list_deliveries(DeliveryFilter())
    assert sorted(d.event_id for d in deliveries) == sorted(e.id for e, _ in fresh)


async def test_a_leased_event_never_handed_over_is_claimed_once_its_lease_expires(
    store: Store,
) -> None:
    # The process that committed it died before routing it: its lease holds others off, then
    # any router claims it from the store.
    clock = ManualClock()
    fresh, _ = await commit_leased(store, clock, 1)
    other = make_router(store, clock)
    await other.route_due()
    assert await states(store, fresh) == ["received"]
    clock.t += LEASE + 1
    await other.route_due()
    assert await states(store, fresh) == ["routed"]


async def test_an_event_whose_lease_ran_out_in_memory_is_left_to_the_claim_path(
    store: Store,
) -> None:
    # Another router may claim it any moment now; routing it from memory too could route it
    # twice at once. It is routed exactly once, by the claim, after the lease.
    clock = ManualClock()
    router = make_router(store, clock)
    fresh, lease = await commit_leased(store, clock, 1, lease_for=0.2)
    router.take(fresh, lease)
    await router.route_due()
    assert await states(store, fresh) == ["received"]
    clock.t += 1
    await router.route_due()
    assert await states(store, fresh) == ["routed"]
    assert len(await store.list_deliveries(DeliveryFilter())) == 1


async def test_intake_commits_unleased_when_too_many_wait_in_memory(store: Store) -> None:
    clock = ManualClock()
    router = make_router(store, clock)
    assert router.lease_for_intake() is None  # not running: nothing to hand over to
    await router.start()
    try:
        lease = router.lease_for_intake()
        assert lease == Lease("me", clock.now() + LEASE)
        assert router.max_fresh == router_module.MAX_FRESH
        router.max_fresh = 2
        router._fresh.extend([(None, None, 0.0)] * 2)  # type: ignore[list-item]
        assert router.lease_for_intake() is None
    finally:
        router._fresh.clear()
        await router.stop()


async def test_a_router_that_does_not_claim_leaves_stored_events_to_one_that_does(
    store: Store,
) -> None:
    """A serving process with delivery processes (``claims = False``) routes what its intake
    hands over, and nothing else: an event committed unleased (intake had too many waiting)
    is routed by a delivery process's router, once."""
    clock = ManualClock()
    serving = make_router(store, clock)
    serving.claims = False
    fresh, lease = await commit_leased(store, clock, 1, 2)
    unleased = await store.ingest("provider", [IncomingEvent('{"id": 3}', "k3")], clock.now())
    serving.take(fresh, lease)
    assert await serving.route_due() is False
    clock.t += LEASE + 1  # even once nothing holds it off
    await serving.route_due()
    assert await states(store, fresh) == ["routed"] * 2
    (left,) = unleased.event_ids
    assert (await store.get_event(left)).state == "received"  # type: ignore[union-attr]
    delivering = make_router(store, clock)
    await delivering.route_due()
    assert (await store.get_event(left)).state == "routed"  # type: ignore[union-attr]
    deliveries = await store.list_deliveries(DeliveryFilter())
    assert sorted(d.event_id for d in deliveries) == sorted([*(e.id for e, _ in fresh), left])


async def test_stop_routes_what_is_still_in_memory(store: Store) -> None:
    clock = ManualClock()
    router = make_router(store, clock)
    fresh, lease = await commit_leased(store, clock, 1, 2)
    router._fresh.extend((e, v, lease.until) for e, v in fresh)  # handed over, not yet routed
    await router.stop()
    assert await states(store, fresh) == ["routed", "routed"]


class SlowStore:
    """Wraps a store; `ingest` waits until released, as a slow commit would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def ingest(self, *args: Any) -> IngestResult:
        self.entered.set()
        await self.release.wait()
        return await self.store.ingest(*args)

    start_ingest = Store.start_ingest  # the default: `ingest` in a task


class Recorder:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.handed: list[tuple[EventRecord, Any]] = []

    def intake_lease(self) -> Lease:
        return Lease("me", self.clock.now() + LEASE)

    def committed(self, source: str, result: IngestResult, fresh: list, lease: Any) -> None:
        self.handed.extend(fresh)


def endpoint_on(store: Any, clock: ManualClock, handoff: Recorder) -> SourceEndpoint:
    config = SourceConfig.model_validate(
        {"path": "/cb", "format": "json", "auth": {"basic": {"username": "u", "password": "p"}}}
    )
    return SourceEndpoint(
        "provider",
        config,
        JsonFormat(None),
        lambda: store,
        clock,
        [],
        handoff,  # type: ignore[arg-type]
    )


class FakeRequest:
    """The parts of a Sanic request intake reads."""

    def __init__(self, body: bytes) -> None:
        token = base64.b64encode(b"u:p").decode()
        self.headers = {"content-type": "application/json", "authorization": f"Basic {token}"}
        self.body = body
        self.ip = "127.0.0.1"


async def test_a_client_hanging_up_mid_commit_still_hands_its_events_over(store: Store) -> None:
    # Sanic cancels the handler when the connection drops; the commit goes on, so the events
    # it stored leased to this process must still reach the router.
    clock = ManualClock()
    slow, handoff = SlowStore(store), Recorder(clock)
    endpoint = endpoint_on(slow, clock, handoff)
    handler = asyncio.ensure_future(endpoint.handle(FakeRequest(b'[{"id": 1}, {"id": 2}]')))
    await slow.entered.wait()
    handler.cancel()
    slow.release.set()
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert intake._commits, "the commit was abandoned with its request"
    await asyncio.gather(*intake._commits)  # the shielded commit finishes on its own
    assert [v for _, v in handoff.handed] == [{"id": 1}, {"id": 2}]
    stored = await store.list_events("received")
    assert sorted(e.id for e in stored) == sorted(e.id for e, _ in handoff.handed)


async def test_sqlite_commits_a_hung_up_request_and_hands_its_events_over(store: Store) -> None:
    # SQLite's commit is the group commit's own future (`start_ingest`, no task): a request
    # cancelled while its operation waits in the committer's queue still commits, and the
    # commit's callback hands the events over.
    clock = ManualClock()
    handoff = Recorder(clock)
    endpoint = endpoint_on(store, clock, handoff)
    handler = asyncio.ensure_future(endpoint.handle(FakeRequest(b'[{"id": 1}, {"id": 2}]')))
    for _ in range(100):  # until the handler has queued its commit and waits on it
        if intake._commits:
            break
        await asyncio.sleep(0)
    (commit,) = intake._commits
    assert not isinstance(commit, asyncio.Task)
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    await asyncio.gather(*intake._commits)
    assert not commit.cancelled()
    assert [v for _, v in handoff.handed] == [{"id": 1}, {"id": 2}]
    stored = await store.list_events("received")
    assert sorted(e.id for e in stored) == sorted(e.id for e, _ in handoff.handed)


async def test_a_request_through_sqlite_gets_its_commit_result(store: Store) -> None:
    clock = ManualClock()
    handoff = Recorder(clock)
    answer = await endpoint_on(store, clock, handoff).handle(
        FakeRequest(b'[{"id": 1}, {"id": 1}, {"id": 2}]')
    )
    assert answer.status == 200
    assert json.loads(answer.body) == {"accepted": 2, "duplicates": 1, "quarantined": 0}
    assert [v for _, v in handoff.handed] == [{"id": 1}, {"id": 2}]
    assert not intake._commits


class BrokenHandoff(Recorder):
    def committed(self, source: str, result: IngestResult, fresh: list, lease: Any) -> None:
        raise RuntimeError("a bug in the hand-off")


async def test_a_failing_hand_off_answers_500_and_leaves_the_events_stored(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # The hand-off runs in the commit's callback: its failure must still reach the request
    # (500, nothing acknowledged), and the events stay stored for the claim path.
    clock = ManualClock()
    endpoint = endpoint_on(store, clock, BrokenHandoff(clock))
    with caplog.at_level(logging.ERROR, logger="gateway.intake.endpoint"):
        answer = await endpoint.handle(FakeRequest(b'[{"id": 1}]'))
    assert answer.status == 500
    assert [r.getMessage() for r in caplog.records] == [
        "source=provider status=500 error=internal_error"
    ]
    assert len(await store.list_events("received")) == 1
    assert not intake._commits


class FailingSlowStore(SlowStore):
    async def ingest(self, *args: Any) -> IngestResult:
        self.entered.set()
        await self.release.wait()
        raise StoreError("disk full")


async def test_a_failed_commit_of_a_hung_up_request_is_logged_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    slow, handoff = FailingSlowStore(store), Recorder(clock)
    endpoint = endpoint_on(slow, clock, handoff)
    request = FakeRequest(b'[{"id": 1}]')
    handler = asyncio.ensure_future(endpoint.handle(request))
    await slow.entered.wait()
    handler.cancel()
    slow.release.set()
    with pytest.raises(asyncio.CancelledError):
        await handler
    with caplog.at_level(logging.ERROR, logger="gateway.intake.endpoint"):
        await asyncio.gather(*intake._commits, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert [r.getMessage() for r in caplog.records] == [
        "commit of a cancelled request failed: StoreError: disk full"
    ]
    assert handoff.handed == []
