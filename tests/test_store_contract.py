"""The contract every store backend keeps (gateway/store/base.py).

Every test here runs against each backend in `BACKENDS`. To add one, write one more
async context manager that yields a factory of *unopened* stores sharing the same data (a new
factory call is "another process" or "the gateway after a restart") and cleans up afterwards.

Times are explicit epoch floats; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from postgres_support import postgres_backend
from redis_support import redis_backend

from gateway.config.models import RetentionConfig
from gateway.delivery import admin
from gateway.errors import StoreError
from gateway.ids import new_id
from gateway.ops.housekeeping import purge_once
from gateway.store import (
    AttemptRecord,
    DeliveryFilter,
    DeliveryPage,
    FinishedEvent,
    IncomingEvent,
    IngestResult,
    Lease,
    NewDelivery,
    Store,
)
from gateway.store.base import PURGE_KINDS, RetentionPolicy
from gateway.store.sqlite import SQLiteStore

StoreFactory = Callable[[], Store]


@contextlib.asynccontextmanager
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    path = tmp_path / "var" / "gateway.db"
    yield lambda: SQLiteStore(path)


BACKENDS: dict[str, Callable[[Path], contextlib.AbstractAsyncContextManager[StoreFactory]]] = {
    "sqlite": sqlite_backend,
    "redis": redis_backend,
    "postgres": postgres_backend,
}

T0 = 1_700_000_000.0
LEASE = 30.0
SOURCE = "revicom"

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture(params=sorted(BACKENDS))
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens another store on the same data each time it is called; closes them all at the end."""
    async with BACKENDS[request.param](tmp_path) as make:
        opened: list[Store] = []

        async def opener() -> Store:
            s = make()
            await s.open()
            opened.append(s)
            return s

        yield opener
        for s in opened:
            await s.close()


@pytest.fixture
async def store(open_store: Opener) -> Store:
    return await open_store()


# -- helpers -----------------------------------------------------------------------------------


def item(
    key: str, *problems: str, uuid: str | None = None, event: str = "delivered"
) -> IncomingEvent:
    uuid = uuid or f"uuid-{key}"
    raw = json.dumps({"message_uuid": uuid, "callback_event": event, "k": key})
    return IncomingEvent(raw, key, uuid, event, tuple(problems))


async def one_event(store: Store, key: str, now: float = T0, source: str = SOURCE) -> str:
    result = await store.ingest(source, [item(key)], now)
    assert result.accepted == 1
    return result.event_ids[0]


def delivery(
    event_id: str,
    destination: str,
    next_at: float,
    route: str = "all",
    enrichment: dict | None = None,
) -> NewDelivery:
    return NewDelivery(new_id("msg"), event_id, route, destination, next_at, enrichment or {})


async def routed(
    store: Store,
    key: str,
    destinations: list[str],
    now: float = T0,
    next_at: float | None = None,
) -> tuple[str, list[str]]:
    """An event that went through the router (claimed, then finished) with one delivery per
    destination; returns the event id and the delivery ids."""
    event_id = await one_event(store, key, now)
    claimed = await store.claim_events("router", 1000, LEASE, now)
    assert event_id in [e.id for e in claimed]
    news = [delivery(event_id, d, now if next_at is None else next_at) for d in destinations]
    await store.finish_event(event_id, "routed", news, now)
    return event_id, [d.id for d in news]


def attempt(
    started: float, outcome: str, status: int | None = None, error: str | None = None
) -> AttemptRecord:
    return AttemptRecord(started, started + 0.5, outcome, status, error)


async def state_of(store: Store, delivery_id: str) -> str:
    found = await store.get_delivery(delivery_id)
    assert found is not None
    return found[0].state


async def nonzero_counts(store: Store, kind: str) -> dict[str, int]:
    """`counts()[kind]` without states at zero (a backend may list them or leave them out)."""
    return {state: n for state, n in (await store.counts())[kind].items() if n}


async def ids_of(coro: Awaitable[list]) -> list[str]:
    return [r.id for r in await coro]


# -- open, close, ping -------------------------------------------------------------------------


async def test_an_open_store_answers_ping(store: Store) -> None:
    await store.ping()


async def test_close_is_safe_twice_and_a_closed_store_refuses_work(open_store: Opener) -> None:
    s = await open_store()
    await s.close()
    await s.close()
    with pytest.raises(StoreError):
        await s.ingest(SOURCE, [item("k")], T0)


async def test_an_empty_store_has_nothing(store: Store) -> None:
    assert await store.get_event("evt_nope") is None
    assert await store.get_delivery("msg_nope") is None
    assert await store.claim_events("r", 10, LEASE, T0) == []
    assert await store.claim_deliveries("w", "any", 10, LEASE, T0) == []
    assert await store.next_due() is None
    assert await store.has_due_events(T0) is None
    counts = await store.counts()
    assert sum(counts["events"].values()) == 0
    assert sum(counts["deliveries"].values()) == 0


# -- ingest ------------------------------------------------------------------------------------


async def test_ingest_stores_each_item_as_a_received_event(store: Store) -> None:
    items = [item("a", uuid="u-a", event="sent"), item("b", uuid="u-b")]
    result = await store.ingest(SOURCE, items, T0)
    assert (result.accepted, result.duplicates, result.quarantined) == (2, 0, 0)
    assert len(result.event_ids) == 2 and len(set(result.event_ids)) == 2
    for event_id, it in zip(result.event_ids, items, strict=True):
        event = await store.get_event(event_id)
        assert event is not None
        assert event.raw == it.raw
        assert event.payload == json.loads(it.raw)
        assert (event.source, event.state, event.received_at) == (SOURCE, "received", T0)
        assert (event.message_uuid, event.event) == (it.message_uuid, it.event)
        assert event.reason is None and event.recheck is False


async def test_ingest_keeps_every_character_of_the_raw_element(store: Store) -> None:
    """Quotes, backslashes, braces, commas, spaces, NULL-looking text and non-ASCII text come
    back exactly (array parameters are where a store could mangle them)."""
    raws = [
        json.dumps({"k": 'a "quoted" \\ back\\slash {x,y} NULL', "n": "Zoë 🙂 ÿ"}),
        '{"k" : [1 , 2] ,  "e":"NULL"}',
        json.dumps({"k": "plain"}, ensure_ascii=False) + "  ",
    ]
    items = [IncomingEvent(raw, f"key-{i}", f"u-{i}", "sent") for i, raw in enumerate(raws)]
    result = await store.ingest(SOURCE, items, T0)
    assert result.accepted == 3
    for event_id, raw in zip(result.event_ids, raws, strict=True):
        event = await store.get_event(event_id)
        assert event is not None and event.raw == raw


async def test_ingest_of_nothing_stores_nothing(store: Store) -> None:
    assert await store.ingest(SOURCE, [], T0) == IngestResult()


async def test_ingest_drops_a_key_seen_in_an_earlier_call(store: Store) -> None:
    await store.ingest(SOURCE, [item("a")], T0)
    result = await store.ingest(SOURCE, [item("a"), item("b")], T0 + 300)
    assert (result.accepted, result.duplicates, result.quarantined) == (1, 1, 0)
    assert len(result.event_ids) == 1
    assert (await store.get_event(result.event_ids[0])).raw == item("b").raw
    assert (await store.counts())["events"]["received"] == 2


async def test_ingest_drops_a_key_repeated_within_one_call(store: Store) -> None:
    result = await store.ingest(SOURCE, [item("a"), item("a"), item("b"), item("a")], T0)
    assert (result.accepted, result.duplicates) == (2, 2)
    assert (await store.counts())["events"]["received"] == 2


async def test_dedupe_keys_belong_to_their_source(store: Store) -> None:
    await store.ingest("one", [item("a")], T0)
    result = await store.ingest("two", [item("a")], T0)
    assert result.accepted == 1


async def test_concurrent_ingests_of_one_key_store_it_once(store: Store) -> None:
    results = await asyncio.gather(*(store.ingest(SOURCE, [item("same")], T0) for _ in range(50)))
    assert sum(r.accepted for r in results) == 1
    assert sum(r.duplicates for r in results) == 49
    assert await nonzero_counts(store, "events") == {"received": 1}


async def test_concurrent_ingests_through_two_store_objects_store_a_key_once(
    open_store: Opener,
) -> None:
    a, b = await open_store(), await open_store()
    results = await asyncio.gather(
        *(s.ingest(SOURCE, [item(f"k{i}") for i in range(5)], T0) for s in [a, b] * 10)
    )
    assert sum(r.accepted for r in results) == 5
    assert sum(r.duplicates for r in results) == 95
    assert await nonzero_counts(b, "events") == {"received": 5}


async def test_items_with_problems_are_quarantined_with_their_reasons(store: Store) -> None:
    bad = item("bad", "status: required field is missing", "status_time: expected a time")
    result = await store.ingest(SOURCE, [item("good"), bad], T0)
    assert (result.accepted, result.duplicates, result.quarantined) == (1, 0, 1)
    quarantined = await store.get_event(result.event_ids[1])
    assert quarantined.state == "quarantined"
    assert quarantined.raw == bad.raw
    assert "status: required field is missing" in quarantined.reason
    assert "status_time: expected a time" in quarantined.reason
    assert [e.id for e in await store.list_events("quarantined")] == [quarantined.id]
    claimed = await store.claim_events("r", 10, LEASE, T0)
    assert [e.id for e in claimed] == [result.event_ids[0]]


async def test_a_resent_quarantined_item_is_a_duplicate(store: Store) -> None:
    await store.ingest(SOURCE, [item("bad", "x: missing")], T0)
    result = await store.ingest(SOURCE, [item("bad", "x: missing")], T0 + 300)
    assert (result.accepted, result.duplicates, result.quarantined) == (0, 1, 0)


# -- events: claim, finish, hold, quarantine ---------------------------------------------------


async def test_claim_events_leases_due_events_oldest_first_up_to_the_limit(store: Store) -> None:
    ids = [await one_event(store, f"k{i}", T0 + i) for i in range(3)]
    claimed = await store.claim_events("r1", 2, LEASE, T0 + 10)
    assert [e.id for e in claimed] == ids[:2]
    assert all(e.state == "received" for e in claimed)
    assert [e.id for e in await store.claim_events("r2", 10, LEASE, T0 + 10)] == [ids[2]]


async def test_a_leased_event_is_not_claimed_again_until_its_lease_expires(store: Store) -> None:
    event_id = await one_event(store, "a")
    assert await ids_of(store.claim_events("r1", 10, LEASE, T0 + 10)) == [event_id]
    assert await store.claim_events("r2", 10, LEASE, T0 + 10) == []
    assert await store.claim_events("r2", 10, LEASE, T0 + 10 + LEASE - 1) == []
    assert await store.has_due_events(T0 + 11) == pytest.approx(T0 + 10 + LEASE)
    assert await ids_of(store.claim_events("r2", 10, LEASE, T0 + 10 + LEASE + 1)) == [event_id]


async def test_an_event_leased_at_ingest_is_claimed_by_others_only_after_the_lease(
    store: Store,
) -> None:
    result = await store.ingest(
        SOURCE, [item("a"), item("q", "bad")], T0, lease=Lease("me", T0 + LEASE)
    )
    received = result.event_ids[0]
    assert await store.claim_events("other", 10, LEASE, T0 + 1) == []
    assert await store.claim_events("other", 10, LEASE, T0 + LEASE - 1) == []
    assert await store.has_due_events(T0 + 1) == pytest.approx(T0 + LEASE)
    # The quarantined one is never leased or claimed; the received one is, once expired.
    assert await ids_of(store.claim_events("other", 10, LEASE, T0 + LEASE + 1)) == [received]


async def test_the_lease_holder_finishes_an_event_leased_at_ingest(store: Store) -> None:
    result = await store.ingest(SOURCE, [item("a")], T0, lease=Lease("me", T0 + LEASE))
    event_id = result.event_ids[0]
    await store.finish_event(event_id, "routed", [delivery(event_id, "hook", T0 + 1)], T0 + 1)
    assert (await store.get_event(event_id)).state == "routed"
    assert await store.claim_events("other", 10, LEASE, T0 + LEASE + 1) == []


async def test_finish_events_finishes_each_and_skips_one_already_finished(store: Store) -> None:
    ids = [await one_event(store, k) for k in ("a", "b", "c", "d", "e")]
    await store.claim_events("r", 10, LEASE, T0 + 1)
    await store.finish_event(ids[2], "unmatched", [], T0 + 1, "no route")
    await store.finish_event(ids[3], "unmatched", [], T0 + 1, "no route")
    late = delivery(ids[2], "hook", T0 + 2)
    news = [delivery(ids[0], "hook", T0 + 2), delivery(ids[0], "mail", T0 + 2)]
    await store.finish_events(
        [
            FinishedEvent(ids[0], "routed", news, T0 + 2),
            FinishedEvent(ids[1], "filtered", [], T0 + 2, "stale"),
            FinishedEvent(ids[2], "routed", [late], T0 + 2),
            # Finished already, and a verdict without deliveries: left as it was.
            FinishedEvent(ids[3], "filtered", [], T0 + 2, "stale"),
            FinishedEvent(ids[4], "filtered", [], T0 + 2, "stale"),
        ]
    )
    states = [(await store.get_event(i)) for i in ids]
    assert [(e.state, e.reason) for e in states] == [
        ("routed", None),
        ("filtered", "stale"),
        ("unmatched", "no route"),
        ("unmatched", "no route"),
        ("filtered", "stale"),
    ]
    # Finished events are no longer leased: nothing for another router to claim later.
    assert await store.claim_events("other", 10, LEASE, T0 + 2 * LEASE) == []
    assert [await store.get_delivery(d.id) is not None for d in news] == [True, True]
    assert await store.get_delivery(late.id) is None
    assert await store.finish_events([]) is None


async def test_has_due_events_tells_when_the_router_has_work(store: Store) -> None:
    assert await store.has_due_events(T0) is None
    await one_event(store, "a", T0 + 5)
    assert await store.has_due_events(T0 + 5) <= T0 + 5


async def test_finish_event_sets_the_state_and_creates_every_delivery(store: Store) -> None:
    result = await store.ingest(SOURCE, [item("a", uuid="u-1")], T0)
    event_id = result.event_ids[0]
    await store.claim_events("r", 10, LEASE, T0 + 1)
    news = [
        delivery(event_id, "slack", T0 + 2, route="failures", enrichment={"status_text": "x"}),
        delivery(event_id, "email", T0 + 2, route="failures"),
        delivery(event_id, "archive", T0 + 2, route="archive"),
    ]
    await store.finish_event(event_id, "routed", news, T0 + 2)
    assert (await store.get_event(event_id)).state == "routed"
    for new in news:
        found = await store.get_delivery(new.id)
        assert found is not None
        record, attempts = found
        assert attempts == []
        assert (record.event_id, record.route, record.destination) == (
            event_id,
            new.route,
            new.destination,
        )
        assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 0, T0 + 2)
        assert (record.source, record.message_uuid) == (SOURCE, "u-1")
        assert record.enrichment == new.enrichment
        assert record.raw == item("a", uuid="u-1").raw
        assert record.event == json.loads(item("a", uuid="u-1").raw)
        assert record.received_at == T0
    assert await store.claim_events("r", 10, LEASE, T0 + 100) == []
    assert await nonzero_counts(store, "deliveries") == {"pending": 3}


async def test_finish_event_without_deliveries_records_the_outcome(store: Store) -> None:
    event_id = await one_event(store, "a")
    await store.claim_events("r", 10, LEASE, T0)
    await store.finish_event(event_id, "filtered", [], T0 + 1, reason="plugin 'x': test traffic")
    event = await store.get_event(event_id)
    assert (event.state, event.reason) == ("filtered", "plugin 'x': test traffic")
    assert await store.list_deliveries(DeliveryFilter()) == []


async def test_finish_event_is_idempotent_for_a_finished_event(store: Store) -> None:
    event_id, first = await routed(store, "a", ["slack"])
    # A router whose lease expired finishes the same event again: nothing changes.
    late = delivery(event_id, "email", T0)
    await store.finish_event(event_id, "unmatched", [late], T0 + 100)
    assert (await store.get_event(event_id)).state == "routed"
    assert await store.get_delivery(late.id) is None
    assert [d.id for d in await store.list_deliveries(DeliveryFilter())] == first


async def test_hold_event_keeps_it_received_until_retry_at(store: Store) -> None:
    event_id = await one_event(store, "a")
    await store.claim_events("r", 10, LEASE, T0)
    await store.hold_event(event_id, "plugin 'geo' raised TimeoutError", T0 + 60, T0 + 1)
    event = await store.get_event(event_id)
    assert (event.state, event.reason, event.next_route_at) == (
        "received",
        "plugin 'geo' raised TimeoutError",
        T0 + 60,
    )
    assert event.route_attempts == 1
    assert await store.has_due_events(T0 + 2) == pytest.approx(T0 + 60)
    assert await store.claim_events("r", 10, LEASE, T0 + 59) == []
    assert await ids_of(store.claim_events("r", 10, LEASE, T0 + 60)) == [event_id]
    await store.hold_event(event_id, "again", T0 + 120, T0 + 61)
    assert (await store.get_event(event_id)).route_attempts == 2


async def test_quarantine_event_moves_it_out_of_the_router(store: Store) -> None:
    event_id = await one_event(store, "a")
    await store.claim_events("r", 10, LEASE, T0)
    await store.quarantine_event(event_id, "status: required field is missing", T0 + 1)
    event = await store.get_event(event_id)
    assert (event.state, event.reason) == ("quarantined", "status: required field is missing")
    assert await store.claim_events("r", 10, LEASE, T0 + 1000) == []


async def test_replay_quarantined_sends_events_back_with_recheck(store: Store) -> None:
    result = await store.ingest(
        SOURCE, [item("q1", "bad"), item("q2", "bad"), item("q3", "bad"), item("ok")], T0
    )
    q1, q2, q3, ok = result.event_ids
    assert sorted(await store.replay_quarantined([q1, ok], T0 + 10)) == [q1]
    event = await store.get_event(q1)
    assert (event.state, event.recheck) == ("received", True)
    assert (await store.get_event(q2)).state == "quarantined"
    claimed = {e.id: e for e in await store.claim_events("r", 10, LEASE, T0 + 10)}
    assert set(claimed) == {q1, ok}
    assert claimed[q1].recheck is True and claimed[ok].recheck is False
    assert sorted(await store.replay_quarantined(None, T0 + 20)) == sorted([q2, q3])
    assert await store.list_events("quarantined") == []


async def test_finishing_a_rechecked_event_clears_recheck(store: Store) -> None:
    event_id = (await store.ingest(SOURCE, [item("q", "bad")], T0)).event_ids[0]
    await store.replay_quarantined(None, T0 + 1)
    await store.claim_events("r", 10, LEASE, T0 + 1)
    await store.finish_event(event_id, "unmatched", [], T0 + 2)
    event = await store.get_event(event_id)
    assert (event.state, event.recheck) == ("unmatched", False)


# -- deliveries: claim, attempts, release ------------------------------------------------------


async def test_claim_deliveries_takes_only_due_deliveries_of_one_destination(store: Store) -> None:
    _, (slack_now, email_now) = await routed(store, "a", ["slack", "email"], T0)
    _, (slack_later,) = await routed(store, "b", ["slack"], T0 + 1, next_at=T0 + 100)
    claimed = await store.claim_deliveries("w1", "slack", 10, LEASE, T0 + 5)
    assert [d.id for d in claimed] == [slack_now]
    record = claimed[0]
    assert (record.state, record.destination, record.attempts) == ("in_flight", "slack", 0)
    assert record.lease_until == pytest.approx(T0 + 5 + LEASE)
    assert record.raw == item("a").raw and record.received_at == T0
    assert await store.claim_deliveries("w2", "slack", 10, LEASE, T0 + 20) == []
    await store.finish_attempt(
        slack_now, attempt(T0 + 5, "delivered", 200), "delivered", None, True, T0 + 6
    )
    assert await store.claim_deliveries("w2", "slack", 10, LEASE, T0 + 99) == []
    assert await ids_of(store.claim_deliveries("w2", "slack", 10, LEASE, T0 + 100)) == [slack_later]
    assert await ids_of(store.claim_deliveries("w1", "email", 10, LEASE, T0 + 5)) == [email_now]


async def test_claim_deliveries_respects_the_limit_earliest_first(store: Store) -> None:
    ids = []
    for i, due in enumerate([T0 + 30, T0 + 10, T0 + 20]):
        ids.append((await routed(store, f"k{i}", ["crm"], T0, next_at=due))[1][0])
    first = await store.claim_deliveries("w", "crm", 2, LEASE, T0 + 60)
    assert [d.id for d in first] == [ids[1], ids[2]]
    assert await ids_of(store.claim_deliveries("w", "crm", 2, LEASE, T0 + 60)) == [ids[0]]


async def test_a_leased_delivery_is_taken_over_only_after_its_lease(store: Store) -> None:
    _, (did,) = await routed(store, "a", ["crm"])
    assert await ids_of(store.claim_deliveries("w1", "crm", 10, LEASE, T0)) == [did]
    assert await store.claim_deliveries("w2", "crm", 10, LEASE, T0 + LEASE - 1) == []
    assert await store.next_due("crm") == pytest.approx(T0 + LEASE)
    again = await store.claim_deliveries("w2", "crm", 10, LEASE, T0 + LEASE + 1)
    assert [d.id for d in again] == [did]
    assert again[0].attempts == 0, "a lease takeover is not a counted try"


async def test_concurrent_claims_through_two_store_objects_never_share_work(
    open_store: Opener,
) -> None:
    a, b = await open_store(), await open_store()
    for i in range(10):
        await one_event(a, f"e{i}", T0)
    claims = await asyncio.gather(
        *(s.claim_events(f"r{i}", 3, LEASE, T0) for i, s in enumerate([a, b] * 4))
    )
    event_ids = [e.id for batch in claims for e in batch]
    assert len(event_ids) == len(set(event_ids)) == 10
    for event_id in event_ids:
        await a.finish_event(event_id, "routed", [delivery(event_id, "crm", T0)], T0)
    claims = await asyncio.gather(
        *(s.claim_deliveries(f"w{i}", "crm", 3, LEASE, T0) for i, s in enumerate([a, b] * 4))
    )
    delivery_ids = [d.id for batch in claims for d in batch]
    assert len(delivery_ids) == len(set(delivery_ids)) == 10


async def test_finish_attempt_records_history_with_increasing_numbers(store: Store) -> None:
    _, (did,) = await routed(store, "a", ["crm"])
    await store.claim_deliveries("w", "crm", 1, LEASE, T0)
    await store.finish_attempt(
        did, attempt(T0, "retry", 503, "HTTP 503"), "pending", T0 + 10, True, T0 + 1
    )
    record, _ = await store.get_delivery(did)
    assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 1, T0 + 10)
    assert (record.last_status, record.last_error) == (503, "HTTP 503")
    assert record.first_attempt_at == T0
    assert await store.claim_deliveries("w", "crm", 1, LEASE, T0 + 9) == []
    assert await ids_of(store.claim_deliveries("w", "crm", 1, LEASE, T0 + 10)) == [did]
    await store.finish_attempt(
        did, attempt(T0 + 10, "delivered", 200), "delivered", None, True, T0 + 11
    )
    record, attempts = await store.get_delivery(did)
    assert (record.state, record.attempts, record.first_attempt_at) == ("delivered", 2, T0)
    assert record.last_status == 200 and record.last_error is None
    assert [(a.number, a.outcome, a.status, a.error, a.started_at) for a in attempts] == [
        (1, "retry", 503, "HTTP 503", T0),
        (2, "delivered", 200, None, T0 + 10),
    ]
    assert await store.claim_deliveries("w", "crm", 1, LEASE, T0 + 1000) == []


async def test_tries_finishing_together_are_each_recorded_as_alone(store: Store) -> None:
    """Outcomes recorded at once (the PostgreSQL store commits them as one group), the same
    delivery's second try among them: every delivery gets its own state, counts and numbered
    attempts, the repeated one numbered 1 and 2 in call order."""
    _, dids = await routed(store, "a", [f"hook{i}" for i in range(12)])
    for i in range(12):
        assert len(await store.claim_deliveries("w", f"hook{i}", 1, LEASE, T0)) == 1
    outcomes = [
        ("delivered", 200, None, "delivered", None, True),
        ("retry", 503, "HTTP 503", "pending", T0 + 30, True),
        ("throttled", 429, "HTTP 429", "pending", T0 + 60, False),
        ("dead", 410, "HTTP 410", "dead", None, True),
    ]
    calls = [
        store.finish_attempt(did, attempt(T0 + i, kind, code, err), state, nxt, counts, T0 + 1 + i)
        for i, did in enumerate(dids)
        for kind, code, err, state, nxt, counts in [outcomes[i % 4]]
    ]
    calls.append(
        store.finish_attempt(
            dids[0], attempt(T0 + 50, "delivered", 200), "delivered", None, True, T0 + 51
        )
    )
    await asyncio.gather(*calls)
    for i, did in enumerate(dids):
        kind, code, err, state, nxt, counts = outcomes[i % 4]
        record, attempts = await store.get_delivery(did)
        assert (record.state, record.last_status, record.last_error) == (state, code, err)
        assert record.first_attempt_at == T0 + i
        if nxt is not None:
            assert record.next_attempt_at == nxt
        if i == 0:
            assert [(a.number, a.started_at) for a in attempts] == [(1, T0), (2, T0 + 50)]
            assert record.attempts == 2
        else:
            assert [(a.number, a.outcome, a.status) for a in attempts] == [(1, kind, code)]
            assert record.attempts == (1 if counts else 0)


async def test_an_attempts_details_are_kept_with_it(store: Store) -> None:
    _, (did,) = await routed(store, "a", ["support"])
    await store.claim_deliveries("w", "support", 1, LEASE, T0)
    refused = {"refused": {"gone@example.com": "550 5.1.1 No such user"}}
    await store.finish_attempt(
        did,
        replace(attempt(T0, "delivered", 250), details=refused),
        "delivered",
        None,
        True,
        T0 + 1,
    )
    _, attempts = await store.get_delivery(did)
    assert [a.details for a in attempts] == [refused]


async def test_an_attempt_that_does_not_count_keeps_the_attempt_count(store: Store) -> None:
    _, (did,) = await routed(store, "a", ["slack"])
    await store.claim_deliveries("w", "slack", 1, LEASE, T0)
    await store.finish_attempt(
        did, attempt(T0, "throttled", 429, "HTTP 429"), "pending", T0 + 60, False, T0 + 1
    )
    record, attempts = await store.get_delivery(did)
    assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 0, T0 + 60)
    assert [(a.number, a.outcome) for a in attempts] == [(1, "throttled")]
    await store.claim_deliveries("w", "slack", 1, LEASE, T0 + 60)
    await store.finish_attempt(
        did, attempt(T0 + 60, "retry", 500), "pending", T0 + 70, True, T0 + 61
    )
    record, attempts = await store.get_delivery(did)
    assert record.attempts == 1
    assert [a.number for a in attempts] == [1, 2]


async def test_a_dead_delivery_stays_visible_and_is_never_claimed(store: Store) -> None:
    _, (did,) = await routed(store, "a", ["crm"])
    await store.claim_deliveries("w", "crm", 1, LEASE, T0)
    await store.finish_attempt(
        did, attempt(T0, "dead", 404, "HTTP 404 Not Found"), "dead", None, True, T0 + 1
    )
    record, attempts = await store.get_delivery(did)
    assert (record.state, record.attempts, record.last_error) == ("dead", 1, "HTTP 404 Not Found")
    assert len(attempts) == 1
    assert await store.claim_deliveries("w", "crm", 1, LEASE, T0 + 10_000) == []
    assert await store.next_due("crm") is None


async def test_release_gives_leased_deliveries_back_due_now(store: Store) -> None:
    _, (a, b) = await routed(store, "a", ["crm", "crm"])
    _, (c,) = await routed(store, "c", ["crm"], T0, next_at=T0 + 500)
    await store.claim_deliveries("w1", "crm", 10, LEASE, T0)
    await store.release([a, b, c], T0 + 2)
    for did in (a, b):
        record, attempts = await store.get_delivery(did)
        assert (record.state, record.attempts, attempts) == ("pending", 0, [])
        assert record.next_attempt_at <= T0 + 2
    record, _ = await store.get_delivery(c)
    assert (record.state, record.next_attempt_at) == ("pending", T0 + 500), (
        "release only touches leased deliveries"
    )
    assert sorted(await ids_of(store.claim_deliveries("w2", "crm", 10, LEASE, T0 + 2))) == sorted(
        [a, b]
    )


async def test_release_does_not_touch_finished_deliveries(store: Store) -> None:
    _, (did,) = await routed(store, "a", ["crm"])
    await store.claim_deliveries("w", "crm", 1, LEASE, T0)
    await store.finish_attempt(did, attempt(T0, "delivered", 200), "delivered", None, True, T0)
    await store.release([did], T0 + 1)
    assert await state_of(store, did) == "delivered"


async def test_next_due_is_the_earliest_claimable_time(store: Store) -> None:
    await routed(store, "a", ["slack"], T0, next_at=T0 + 50)
    await routed(store, "b", ["email"], T0, next_at=T0 + 20)
    assert await store.next_due("slack") == pytest.approx(T0 + 50)
    assert await store.next_due("email") == pytest.approx(T0 + 20)
    assert await store.next_due() == pytest.approx(T0 + 20)
    assert await store.next_due("nowhere") is None


# -- inspection and replay ---------------------------------------------------------------------


async def test_list_deliveries_filters_by_state_destination_message_and_since(store: Store) -> None:
    _, (s1, e1) = await routed(store, "a", ["slack", "email"], T0)
    _, (s2,) = await routed(store, "b", ["slack"], T0 + 100)
    await store.claim_deliveries("w", "email", 1, LEASE, T0 + 100)
    await store.finish_attempt(e1, attempt(T0, "dead", 550), "dead", None, True, T0 + 101)

    async def listed(**kw: object) -> list[str]:
        return sorted(d.id for d in await store.list_deliveries(DeliveryFilter(**kw)))

    assert await listed() == sorted([s1, e1, s2])
    assert await listed(state="dead") == [e1]
    assert await listed(destination="slack") == sorted([s1, s2])
    assert await listed(message_uuid="uuid-b") == [s2]
    assert await listed(since=T0 + 50) == [s2]
    assert await listed(state="pending", destination="slack", since=T0) == sorted([s1, s2])
    assert len(await store.list_deliveries(DeliveryFilter(limit=2))) == 2
    as_dict = (await store.list_deliveries(DeliveryFilter(state="dead")))[0].as_dict()
    for key in (
        "id",
        "event_id",
        "source",
        "destination",
        "route",
        "state",
        "attempts",
        "next_attempt_at",
        "last_error",
        "message_uuid",
    ):
        assert key in as_dict


async def dead(store: Store, key: str, destination: str, now: float) -> str:
    _, (did,) = await routed(store, key, [destination], now)
    for n in range(2):
        await store.claim_deliveries("w", destination, 10, LEASE, now + n * 10)
        await store.finish_attempt(
            did,
            attempt(now + n * 10, "retry" if n == 0 else "dead", 500, "HTTP 500"),
            "pending" if n == 0 else "dead",
            now + 10,
            True,
            now + n * 10 + 1,
        )
    assert await state_of(store, did) == "dead"
    return did


async def test_replay_by_id_resets_attempts_keeps_history_and_the_id(store: Store) -> None:
    did = await dead(store, "a", "crm", T0)
    assert await store.replay_deliveries([did], None, T0 + 500) == [did]
    record, attempts = await store.get_delivery(did)
    assert (record.id, record.state, record.attempts) == (did, "pending", 0)
    assert record.next_attempt_at <= T0 + 500
    assert record.first_attempt_at is None, "the retry age starts again"
    assert [a.number for a in attempts] == [1, 2]
    assert await ids_of(store.claim_deliveries("w", "crm", 10, LEASE, T0 + 500)) == [did]
    await store.finish_attempt(
        did, attempt(T0 + 500, "delivered", 200), "delivered", None, True, T0 + 501
    )
    record, attempts = await store.get_delivery(did)
    assert (record.state, record.attempts) == ("delivered", 1)
    assert [a.number for a in attempts] == [1, 2, 3]


async def test_replay_by_filter_takes_only_matching_deliveries(store: Store) -> None:
    old_crm = await dead(store, "a", "crm", T0)
    new_crm = await dead(store, "b", "crm", T0 + 1000)
    new_slack = await dead(store, "c", "slack", T0 + 1000)
    _, (pending_crm,) = await routed(store, "d", ["crm"], T0 + 1000, next_at=T0 + 9000)
    flt = DeliveryFilter(state="dead", destination="crm", since=T0 + 500)
    assert await store.replay_deliveries(None, flt, T0 + 2000) == [new_crm]
    assert await state_of(store, new_crm) == "pending"
    assert await state_of(store, old_crm) == "dead"
    assert await state_of(store, new_slack) == "dead"
    record, _ = await store.get_delivery(pending_crm)
    assert record.next_attempt_at == T0 + 9000
    replayed = await store.replay_deliveries(None, DeliveryFilter(state="dead"), T0 + 3000)
    assert sorted(replayed) == sorted([old_crm, new_slack])


async def test_replay_never_resets_a_delivery_in_flight(store: Store) -> None:
    # Resetting a leased delivery would let a second worker send it while the first still is.
    _, (did,) = await routed(store, "a", ["crm"])
    await store.claim_deliveries("w1", "crm", 1, LEASE, T0)
    assert await store.replay_deliveries([did], None, T0 + 1) == []
    assert await store.replay_deliveries(None, DeliveryFilter(destination="crm"), T0 + 1) == []
    assert await state_of(store, did) == "in_flight"
    assert await store.claim_deliveries("w2", "crm", 1, LEASE, T0 + 1) == []


async def test_replay_of_unknown_ids_replays_nothing(store: Store) -> None:
    assert await store.replay_deliveries(["msg_nope"], None, T0) == []
    assert await store.replay_deliveries([], None, T0) == []


# -- the console's reads -----------------------------------------------------------------------


async def test_message_events_lists_every_event_of_a_message_with_its_decision(
    store: Store,
) -> None:
    first = (await store.ingest(SOURCE, [item("a1", uuid="m-1", event="sent")], T0)).event_ids[0]
    bad = (await store.ingest(SOURCE, [item("a2", "no status", uuid="m-1")], T0 + 1)).event_ids[0]
    late = (await store.ingest(SOURCE, [item("a3", uuid="m-1")], T0 + 2)).event_ids[0]
    await one_event(store, "other", T0 + 3)
    await store.claim_events("router", 1000, LEASE, T0 + 3)
    await store.finish_event(first, "routed", [delivery(first, "crm", T0)], T0 + 3)
    await store.finish_event(late, "filtered", [], T0 + 3, "route 'crm': out of order")
    found = await store.message_events("m-1")
    assert [e.id for e in found] == [first, bad, late]
    assert [(e.state, e.reason) for e in found] == [
        ("routed", None),
        ("quarantined", "no status"),
        ("filtered", "route 'crm': out of order"),
    ]
    assert found[1].raw == item("a2", "no status", uuid="m-1").raw
    assert [e.id for e in await store.message_events("m-1", limit=2)] == [first, bad]
    assert await store.message_events("nobody") == []


async def test_page_deliveries_walks_newest_first_by_keyset(store: Store) -> None:
    made: list[tuple[float, str, str]] = []  # (created_at, id, destination)
    for n in range(7):
        dest = "crm" if n % 2 else "slack"
        _, (did,) = await routed(store, f"k{n}", [dest], T0 + (n // 2))  # pairs share a time
        made.append((T0 + (n // 2), did, dest))
    newest = [d for _, d, _ in sorted(made, reverse=True)]

    async def walk(**kw: object) -> list[str]:
        seen: list[str] = []
        before = None
        while True:
            page = await store.page_deliveries(DeliveryPage(before=before, limit=2, **kw))
            assert len(page) <= 2
            seen += [d.id for d in page]
            if len(page) < 2:
                return seen
            before = (page[-1].created_at, page[-1].id)

    assert await walk() == newest
    assert await walk(destination="crm") == [
        d for _, d, dest in sorted(made, reverse=True) if dest == "crm"
    ]
    assert await walk(since=T0 + 1, until=T0 + 3) == [
        d for t, d, _ in sorted(made, reverse=True) if T0 + 1 <= t < T0 + 3
    ]
    dead_one = await dead(store, "z", "crm", T0 + 50)
    assert await walk(state="dead") == [dead_one]
    assert await walk(state="dead", destination="slack") == []
    assert await walk(state="pending", destination="slack") == [
        d for _, d, dest in sorted(made, reverse=True) if dest == "slack"
    ]
    one = (await store.page_deliveries(DeliveryPage(limit=1)))[0]
    assert (one.id, one.state, one.raw != "") == (dead_one, "dead", True)


async def test_source_activity_counts_recent_arrivals_and_quarantine(store: Store) -> None:
    await store.ingest(SOURCE, [item("old")], T0)
    await store.ingest(SOURCE, [item("new"), item("bad", "broken")], T0 + 600)
    await store.ingest("other", [item("x")], T0 + 700)
    found = await store.source_activity([SOURCE, "other", "silent"], T0 + 300)
    assert [(a.source, a.last_received_at, a.received, a.quarantined) for a in found] == [
        (SOURCE, T0 + 600, 2, 1),
        ("other", T0 + 700, 1, 0),
        ("silent", None, 0, 0),
    ]


async def test_delivered_since_counts_by_finishing_time_per_destination(store: Store) -> None:
    _, (early, late, other) = await routed(store, "a", ["crm", "crm", "slack"], T0)
    for did, dest, at in (
        (early, "crm", T0 + 10),
        (late, "crm", T0 + 900),
        (other, "slack", T0 + 900),
    ):
        await store.claim_deliveries("w", dest, 10, LEASE, at)
        await store.finish_attempt(did, attempt(at, "delivered", 200), "delivered", None, True, at)
    await routed(store, "b", ["crm"], T0 + 950)  # pending: not counted
    assert await store.delivered_since(["crm", "slack", "none"], T0 + 500) == {
        "crm": 1,
        "slack": 1,
        "none": 0,
    }
    assert (await store.delivered_since(["crm"], T0))["crm"] == 2


async def test_recent_errors_lists_the_latest_failures_first(store: Store) -> None:
    older = await dead(store, "a", "crm", T0)
    _, (retrying, fine) = await routed(store, "b", ["slack", "email"], T0 + 100)
    await store.claim_deliveries("w", "slack", 10, LEASE, T0 + 100)
    await store.finish_attempt(
        retrying, attempt(T0 + 100, "retry", None, "timed out"), "pending", T0 + 200, True, T0 + 101
    )
    await store.claim_deliveries("w", "email", 10, LEASE, T0 + 100)
    await store.finish_attempt(
        fine, attempt(T0 + 100, "delivered", 250), "delivered", None, True, T0 + 102
    )
    errors = await store.recent_errors(10)
    assert [(d.id, d.last_error) for d in errors] == [(retrying, "timed out"), (older, "HTTP 500")]
    assert [d.id for d in await store.recent_errors(1)] == [retrying]
    await store.claim_deliveries("w", "slack", 10, LEASE, T0 + 200)
    await store.finish_attempt(
        retrying, attempt(T0 + 200, "delivered", 200), "delivered", None, True, T0 + 201
    )
    assert [d.id for d in await store.recent_errors(10)] == [older]


async def test_queue_figures_are_queue_stats_counted_up_to_a_cap(store: Store) -> None:
    await routed(store, "a", ["crm", "crm", "crm", "slack"], T0)
    await routed(store, "b", ["crm"], T0 + 5)
    await dead(store, "c", "slack", T0 + 10)  # claims slack's pending one too: in flight
    exact = {
        (r["destination"], r["state"]): (r["count"], r["oldest"])
        for r in await store.queue_stats(T0 + 100)
    }
    capped = {(r["destination"], r["state"]): r for r in await store.queue_figures(2)}
    assert set(capped) == set(exact)
    for key, row in capped.items():
        count, oldest = exact[key]
        assert row["oldest"] == oldest
        assert (row["count"], row["capped"]) in [(count, False), (2, True)]
        assert row["capped"] is False or count > 2
    assert capped[("slack", "dead")]["count"] == 1 and not capped[("slack", "dead")]["capped"]


# -- retention: purge ---------------------------------------------------------------------------

DAY = 86400.0


def policy(batch: int = 1000, **windows: float) -> RetentionPolicy:
    """A policy keeping everything for a day unless `windows` says otherwise."""
    kept = {k: DAY for k in ("dedupe", "events", "delivered", "dead", "quarantined", "marks")}
    return RetentionPolicy(**{**kept, **windows}, batch=batch)


async def delivered(store: Store, key: str, destination: str, at: float) -> tuple[str, str]:
    """An event routed at `at` with one delivery, delivered at `at` (attempt 1 of 1)."""
    event_id, (did,) = await routed(store, key, [destination], at)
    assert await ids_of(store.claim_deliveries("w", destination, 1000, LEASE, at)) == [did]
    await store.finish_attempt(did, attempt(at, "delivered", 200), "delivered", None, True, at)
    return event_id, did


async def test_a_pass_reports_a_count_for_every_kind(store: Store) -> None:
    assert await store.purge(policy(), T0) == dict.fromkeys(PURGE_KINDS, 0)


async def test_purge_forgets_old_dedupe_keys_only(store: Store) -> None:
    await store.ingest(SOURCE, [item("old")], T0)
    await store.ingest(SOURCE, [item("new")], T0 + 100)
    result = await store.purge(policy(dedupe=100), T0 + 150)
    assert result["dedupe_keys"] == 1
    again = await store.ingest(SOURCE, [item("old"), item("new")], T0 + 200)
    assert (again.accepted, again.duplicates) == (1, 1)
    assert (await store.get_event(again.event_ids[0])).raw == item("old").raw


async def test_delivered_and_dead_deliveries_go_after_their_own_windows(store: Store) -> None:
    _, old_ok = await delivered(store, "a", "crm", T0)
    old_dead = await dead(store, "b", "email", T0)  # two attempts
    _, new_ok = await delivered(store, "c", "crm", T0 + 1000)
    result = await store.purge(policy(delivered=500, dead=5000), T0 + 1200)
    assert (result["delivered"], result["dead"], result["attempts"]) == (1, 0, 1)
    assert await store.get_delivery(old_ok) is None
    assert await store.get_delivery(new_ok) is not None
    assert await state_of(store, old_dead) == "dead"
    result = await store.purge(policy(delivered=500, dead=5000), T0 + 6000)
    assert (result["delivered"], result["dead"], result["attempts"]) == (1, 1, 3)
    assert await store.list_deliveries(DeliveryFilter()) == []


async def test_pending_and_in_flight_deliveries_and_their_events_are_never_purged(
    store: Store,
) -> None:
    waiting, (pending,) = await routed(store, "a", ["paused"], T0, next_at=T0)
    busy, (flying,) = await routed(store, "b", ["crm"], T0)
    await store.claim_deliveries("w", "crm", 10, LEASE, T0)
    result = await store.purge(
        policy(**{k: 1 for k in ("events", "delivered", "dead")}), T0 + 100 * DAY
    )
    assert result["events"] == 0
    assert await state_of(store, pending) == "pending"
    assert await state_of(store, flying) == "in_flight"
    assert (await store.get_event(waiting)).state == "routed"
    assert (await store.get_event(busy)).state == "routed"


async def test_an_event_stays_while_a_delivery_of_it_stays_and_at_least_its_window(
    store: Store,
) -> None:
    event_id, (to_crm, to_slack) = await routed(store, "a", ["crm", "slack"], T0)
    await store.claim_deliveries("w", "crm", 10, LEASE, T0)
    await store.finish_attempt(to_crm, attempt(T0, "delivered", 200), "delivered", None, True, T0)
    windows = policy(events=1000, delivered=10)
    await store.purge(windows, T0 + 100)  # the crm delivery goes; the event is too young
    assert await store.get_delivery(to_crm) is None
    assert (await store.get_event(event_id)).state == "routed"
    await store.purge(windows, T0 + 2000)  # old enough, but the slack delivery is pending
    assert (await store.get_event(event_id)).state == "routed"
    await store.claim_deliveries("w", "slack", 10, LEASE, T0 + 2000)
    await store.finish_attempt(
        to_slack, attempt(T0 + 2000, "delivered", 200), "delivered", None, True, T0 + 2000
    )
    result = await store.purge(windows, T0 + 2020)  # its last delivery goes, and with it the event
    assert (result["delivered"], result["events"]) == (1, 1)
    assert await store.get_event(event_id) is None


async def test_unrouted_events_go_after_the_events_window_and_received_ones_never(
    store: Store,
) -> None:
    unmatched = await one_event(store, "u", T0)
    filtered = await one_event(store, "f", T0)
    await store.claim_events("r", 10, LEASE, T0)
    await store.finish_event(unmatched, "unmatched", [], T0)
    await store.finish_event(filtered, "filtered", [], T0, reason="dropped")
    waiting = await one_event(store, "w", T0)
    young = await one_event(store, "y", T0 + 900)
    await store.claim_events("r", 10, LEASE, T0 + 900)
    await store.finish_event(young, "unmatched", [], T0 + 900)
    result = await store.purge(policy(events=500), T0 + 1000)
    assert result["events"] == 2
    assert await store.get_event(unmatched) is None
    assert await store.get_event(filtered) is None
    assert (await store.get_event(waiting)).state == "received"
    assert (await store.get_event(young)).state == "unmatched"


async def test_quarantined_events_go_after_their_window_counted_from_quarantine(
    store: Store,
) -> None:
    old = (await store.ingest(SOURCE, [item("q1", "bad")], T0)).event_ids[0]
    requarantined = (await store.ingest(SOURCE, [item("q2", "bad")], T0)).event_ids[0]
    await store.replay_quarantined([requarantined], T0 + 900)
    await store.claim_events("r", 10, LEASE, T0 + 900)
    await store.quarantine_event(requarantined, "still bad", T0 + 900)
    result = await store.purge(policy(quarantined=500, events=1), T0 + 1000)
    assert (result["quarantined"], result["events"]) == (1, 0)
    assert await store.get_event(old) is None
    assert [e.id for e in await store.list_events("quarantined")] == [requarantined]


async def test_a_resend_of_a_purged_event_within_the_dedupe_window_is_a_duplicate(
    store: Store,
) -> None:
    event_id, _ = await delivered(store, "a", "crm", T0)
    await store.purge(policy(events=1, delivered=1, dedupe=DAY), T0 + 60)
    assert await store.get_event(event_id) is None
    again = await store.ingest(SOURCE, [item("a")], T0 + 120)
    assert (again.accepted, again.duplicates) == (0, 1)


async def test_a_pass_works_in_batches_and_leaves_a_kept_old_event_behind_it(
    store: Store,
) -> None:
    kept, _ = await routed(store, "kept", ["paused"], T0)  # pending: stays
    gone = [(await delivered(store, f"k{i}", "crm", T0 + 1 + i))[0] for i in range(5)]
    for i in range(3):
        await store.ingest(SOURCE, [item(f"q{i}", "bad")], T0 + 10)
    await store.set_mark("m1", "v", T0)
    await store.set_mark("m2", "v", T0)
    result = await store.purge(
        policy(batch=2, **{k: 1 for k in ("events", "delivered", "dead", "quarantined", "marks")}),
        T0 + 2 * DAY,
    )
    assert result == {
        "events": 5,
        "quarantined": 3,
        "delivered": 5,
        "dead": 0,
        "attempts": 5,
        "dedupe_keys": 9,
        "marks": 2,
    }
    assert (await store.get_event(kept)).state == "routed"
    assert all([await store.get_event(e) is None for e in gone])
    assert await nonzero_counts(store, "events") == {"routed": 1}


async def test_purge_keeps_what_was_written_again_since(store: Store) -> None:
    _, did = await delivered(store, "a", "crm", T0)
    await store.replay_deliveries([did], None, T0 + 100)  # pending again: not delivered now
    await store.set_mark("m", "v", T0)
    await store.set_mark("m", "v2", T0 + 100)  # written again: its window starts again
    result = await store.purge(policy(delivered=50, marks=50), T0 + 120)
    assert (result["delivered"], result["marks"]) == (0, 0)
    assert await state_of(store, did) == "pending"
    assert await store.get_mark("m") == ("", "v2")


# -- marks: scopes -------------------------------------------------------------------------------


async def test_plugin_marks_go_after_their_window_and_gateway_marks_never(store: Store) -> None:
    await store.set_mark("order", "v", T0)
    assert await store.advance_mark("thread", "1", "ts", T0) == (True, None)
    await store.set_mark("paused:crm", "{}", T0, scope="gateway")
    assert await store.advance_mark("silence:s", "1", "t", T0, scope="gateway") == (True, None)
    result = await store.purge(policy(marks=60), T0 + 1000 * DAY)
    assert result["marks"] == 2
    assert await store.get_mark("order") is None
    assert await store.get_mark("thread") is None
    assert await store.get_mark("paused:crm", scope="gateway") == ("", "{}")
    assert await store.get_mark("silence:s", scope="gateway") == ("1", "t")


async def test_the_same_key_in_two_scopes_names_two_marks(store: Store) -> None:
    await store.set_mark("paused:crm", "internal", T0, scope="gateway")
    assert await store.get_mark("paused:crm") is None  # what a plugin would read
    await store.set_mark("paused:crm", "plugin's", T0)
    assert await store.advance_mark("paused:crm", "9", "plugin's too", T0) == (True, "plugin's")
    await store.set_mark("paused:crm", None, T0)
    assert await store.get_mark("paused:crm", scope="gateway") == ("", "internal")
    with pytest.raises(ValueError):
        await store.get_mark("k", scope="nope")


async def test_concurrent_advances_from_two_instances_leave_one_chain(open_store: Opener) -> None:
    """Many advances of new keys at once, from two instances (on PostgreSQL, on as many
    connections): each key ends at its highest rank, and the answers are those of one serial
    order: the advanced values, by rank, each report the one before as previous; the others
    report a value ranked at least as high as theirs."""
    a, b = await open_store(), await open_store()
    ranks = [f"{r:03d}" for r in (7, 93, 15, 42, 88, 3, 61, 70, 29, 54, 11, 99, 36, 80, 5, 47)]
    keys = [f"race-{k}" for k in range(4)]
    calls = [
        (a if i % 2 else b).advance_mark(key, rank, f"{key}={rank}", T0)
        for key in keys
        for i, rank in enumerate(ranks)
    ]
    found = await asyncio.gather(*calls)
    for k, key in enumerate(keys):
        answers = list(zip(ranks, found[k * len(ranks) : (k + 1) * len(ranks)], strict=True))
        chain = sorted((rank, previous) for rank, (advanced, previous) in answers if advanced)
        assert chain[-1][0] == max(ranks)
        assert [previous for _, previous in chain] == [None] + [
            f"{key}={rank}" for rank, _ in chain[:-1]
        ]
        for rank, (advanced, previous) in answers:
            if not advanced:
                assert previous is not None and previous.split("=")[1] > rank
        assert await a.get_mark(key) == (max(ranks), f"{key}={max(ranks)}")


async def test_a_paused_destination_stays_paused_whatever_the_retention(store: Store) -> None:
    # Pauses used to be plugin marks, which the retention pass deleted after a week: a paused
    # destination silently resumed.
    await admin.pause_destination(store, "crm", "maintenance", T0)
    await purge_once(store, RetentionConfig(), T0 + 60 * DAY)
    assert await admin.paused_reason(store, "crm") == "maintenance"


# -- counts ------------------------------------------------------------------------------------


async def test_counts_events_and_deliveries_by_state(store: Store) -> None:
    await store.ingest(SOURCE, [item("q", "bad"), item("r")], T0)
    await routed(store, "a", ["crm", "slack"], T0)
    await store.claim_deliveries("w", "crm", 10, LEASE, T0)
    assert await nonzero_counts(store, "events") == {"quarantined": 1, "received": 1, "routed": 1}
    assert await nonzero_counts(store, "deliveries") == {"in_flight": 1, "pending": 1}


# -- durability --------------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(open_store: Opener) -> None:
    first = await open_store()
    q = (await first.ingest(SOURCE, [item("q", "bad")], T0)).event_ids[0]
    event_id, (did,) = await routed(first, "a", ["crm"])
    await first.claim_deliveries("w", "crm", 1, LEASE, T0)
    await first.finish_attempt(
        did, attempt(T0, "retry", 502, "HTTP 502"), "pending", T0 + 10, True, T0 + 1
    )
    before = await first.counts()
    await first.close()

    second = await open_store()
    assert await second.counts() == before
    assert (await second.get_event(q)).reason == "bad"
    assert (await second.get_event(event_id)).state == "routed"
    record, attempts = await second.get_delivery(did)
    assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 1, T0 + 10)
    assert [(a.number, a.status) for a in attempts] == [(1, 502)]
    assert (await second.ingest(SOURCE, [item("a")], T0 + 60)).duplicates == 1
    assert await ids_of(second.claim_deliveries("w", "crm", 1, LEASE, T0 + 10)) == [did]


async def test_a_lease_taken_before_a_restart_expires_after_it(open_store: Opener) -> None:
    first = await open_store()
    _, (did,) = await routed(first, "a", ["crm"])
    event_id = await one_event(first, "b", T0)
    await first.claim_deliveries("w-dead", "crm", 1, LEASE, T0)
    await first.claim_events("r-dead", 10, LEASE, T0)
    await first.close()
    second = await open_store()
    assert await second.claim_deliveries("w", "crm", 1, LEASE, T0 + 1) == []
    assert await ids_of(second.claim_deliveries("w", "crm", 1, LEASE, T0 + LEASE + 1)) == [did]
    assert await ids_of(second.claim_events("r", 10, LEASE, T0 + LEASE + 1)) == [event_id]


# -- SQLite specifics: atomicity under a failing write -----------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "gw.db")
    await s.open()
    yield s
    await s.close()


def add_trigger(path: Path, table: str, condition: str) -> None:
    """Make inserts into `table` that match `condition` fail, as a full disk would."""
    conn = sqlite3.connect(path)
    conn.execute(
        f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} WHEN {condition}"
        " BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
    )
    conn.commit()
    conn.close()


async def test_sqlite_a_failed_ingest_stores_nothing_of_that_call(
    sqlite_store: SQLiteStore,
) -> None:
    add_trigger(sqlite_store.path, "events", "NEW.raw LIKE '%boom%'")
    with pytest.raises(StoreError):
        await sqlite_store.ingest(SOURCE, [item("fine"), item("boom")], T0)
    assert sum((await sqlite_store.counts())["events"].values()) == 0
    result = await sqlite_store.ingest(SOURCE, [item("fine")], T0 + 1)
    assert result.accepted == 1, "the dedupe key of a failed call must not be kept"


async def test_sqlite_a_failed_finish_event_creates_no_delivery(
    sqlite_store: SQLiteStore,
) -> None:
    add_trigger(sqlite_store.path, "deliveries", "NEW.destination = 'boom'")
    event_id = await one_event(sqlite_store, "a")
    await sqlite_store.claim_events("r", 10, LEASE, T0)
    news = [delivery(event_id, "fine", T0), delivery(event_id, "boom", T0)]
    with pytest.raises(StoreError):
        await sqlite_store.finish_event(event_id, "routed", news, T0 + 1)
    assert (await sqlite_store.get_event(event_id)).state == "received"
    assert await sqlite_store.list_deliveries(DeliveryFilter()) == []


async def test_a_file_from_before_attempt_details_opens_and_keeps_details(tmp_path: Path) -> None:
    """A database written before the ``details`` column existed is upgraded on open."""

    from gateway.store.sqlite import SQLiteStore
    from gateway.store.sqlite_schema import SCHEMA

    path = tmp_path / "old.db"
    old_schema = re.sub(r"\n    details TEXT,[^\n]*", "", SCHEMA)
    assert "details" not in old_schema
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
    store = SQLiteStore(path)
    await store.open()
    try:
        _, (did,) = await routed(store, "a", ["support"])
        await store.claim_deliveries("w", "support", 1, LEASE, T0)
        await store.finish_attempt(
            did,
            replace(attempt(T0, "retry", 451), details={"x": 1}),
            "pending",
            T0 + 5,
            True,
            T0 + 1,
        )
        _, attempts = await store.get_delivery(did)
        assert attempts[0].details == {"x": 1}
    finally:
        await store.close()
