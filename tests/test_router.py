"""The router loop: committed events become deliveries; a raising plugin holds the event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import hookimpl
from gateway.config import load_config_text
from gateway.routing.chain import Chain
from gateway.routing.router import Router, hold_delay
from gateway.store import DeliveryFilter, IncomingEvent, store_from_url

CONFIG = """
store: sqlite:///gw.db
sources:
  provider: {path: /cb, format: json, options: {required: [/id]}}
destinations:
  archive: {type: file, path: out.jsonl}
  crm: {type: file, path: crm.jsonl, enabled: %(crm_enabled)s}
routes:
  - name: inbound
    match: {kind: inbound}
    to: [crm]
  - name: archive
    match: {kind: status}
    to: [archive]
"""


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


class Flaky:
    """An enrich_event plugin that raises until told to stop."""

    def __init__(self) -> None:
        self.broken = True

    @hookimpl
    def enrich_event(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("CRM lookup failed")
        return {"team": "ops"}


def loaded(crm_enabled: bool = True, extra: tuple[object, ...] = (), text: str = CONFIG):
    return load_config_text(
        text % {"crm_enabled": str(crm_enabled).lower()}, {}, extra_plugins=extra
    )


@pytest.fixture
async def store(tmp_path: Path):
    s = store_from_url("sqlite:///gw.db", tmp_path)
    await s.open()
    yield s
    await s.close()


async def ingest(store, *elements: dict[str, Any], problems: tuple[str, ...] = ()) -> list[str]:
    items = [IncomingEvent(json.dumps(e), json.dumps(e), None, None, problems) for e in elements]
    return list((await store.ingest("provider", items, 1_000.0)).event_ids)


def router_for(cfg, store, clock) -> Router:
    return Router(cfg, store, Chain(cfg, store, clock), clock, "test")


async def test_each_matching_route_and_destination_gets_one_delivery(store) -> None:
    clock = FakeClock()
    cfg = loaded()
    (inbound,) = await ingest(store, {"id": 1, "kind": "inbound"})
    (status,) = await ingest(store, {"id": 2, "kind": "status"})
    (other,) = await ingest(store, {"id": 3, "kind": "other"})
    await router_for(cfg, store, clock).route_due()

    by_event = {}
    for d in await store.list_deliveries(DeliveryFilter()):
        by_event.setdefault(d.event_id, []).append((d.route, d.destination, d.state))
    assert by_event == {
        inbound: [("inbound", "crm", "pending")],
        status: [("archive", "archive", "pending")],
    }
    assert (await store.get_event(other)).state == "unmatched"
    assert (await store.get_event(inbound)).state == "routed"


async def test_routes_to_disabled_destinations_record_the_event_as_unmatched(store) -> None:
    clock = FakeClock()
    (inbound,) = await ingest(store, {"id": 1, "kind": "inbound"})
    await router_for(loaded(crm_enabled=False), store, clock).route_due()
    event = await store.get_event(inbound)
    assert event.state == "unmatched"
    assert "disabled destinations: crm" in event.reason
    assert (await store.counts())["deliveries"] == {}


async def test_a_raising_plugin_holds_the_event_with_its_name_then_retries(store) -> None:
    clock = FakeClock()
    flaky = Flaky()
    cfg = loaded(extra=(flaky,))
    (event_id,) = await ingest(store, {"id": 1, "kind": "status"})
    router = router_for(cfg, store, clock)
    await router.route_due()

    held = await store.get_event(event_id)
    assert held.state == "received"
    assert "CRM lookup failed" in held.reason and "RuntimeError" in held.reason
    assert held.next_route_at == clock.now() + hold_delay(0)
    assert held.route_attempts == 1

    await router.route_due()  # not due yet: nothing happens
    assert (await store.get_event(event_id)).route_attempts == 1

    clock.t += hold_delay(0)
    flaky.broken = False
    await router.route_due()
    routed = await store.get_event(event_id)
    assert routed.state == "routed"
    (delivery,) = await store.list_deliveries(DeliveryFilter(state="pending"))
    assert delivery.enrichment == {"team": "ops"}


def test_hold_delay_doubles_up_to_five_minutes() -> None:
    assert [hold_delay(n) for n in range(4)] == [1, 2, 4, 8]
    assert hold_delay(50) == 300


async def test_replayed_quarantine_is_checked_against_todays_format(store) -> None:
    clock = FakeClock()
    bad = {"kind": "status"}  # no /id: invalid under the first config
    (event_id,) = await ingest(store, bad, problems=("/id: required field is missing",))
    await store.replay_quarantined(None, clock.now())

    await router_for(loaded(), store, clock).route_due()
    again = await store.get_event(event_id)
    assert again.state == "quarantined"
    assert "/id" in again.reason

    relaxed = CONFIG.replace("options: {required: [/id]}", "options: {}")
    await store.replay_quarantined([event_id], clock.now())
    await router_for(loaded(text=relaxed), store, clock).route_due()
    assert (await store.get_event(event_id)).state == "routed"


AGREEMENT = """
store: sqlite:///gw.db
sources:
  provider: {path: /cb, format: json}
destinations:
  archive: {type: file, path: out.jsonl}
  crm: {type: file, path: crm.jsonl, enabled: false}
  ops: {type: file, path: ops.jsonl}
routes:
  - {name: inbound, match: {kind: inbound}, to: [crm]}
  - {name: failures, match: {status: failed}, to: [crm, ops]}
  - {name: archive, match: {kind: status}, to: [archive]}
"""


async def test_the_router_and_explain_reach_the_same_decision_on_the_same_events(store) -> None:
    """One decision function serves both: what explain says is what the router does, also for
    routes that lead to an ``enabled: false`` destination."""
    from gateway.routing.explain import explain

    cfg = load_config_text(AGREEMENT, {})
    events = [
        {"id": 1, "kind": "inbound"},  # only a disabled destination
        {"id": 2, "kind": "status", "status": "failed"},  # one disabled, two enabled
        {"id": 3, "kind": "status", "status": "ok"},
        {"id": 4, "kind": "other"},
    ]
    ids = await ingest(store, *events)
    clock = FakeClock()
    await router_for(cfg, store, clock).route_due()
    routed = {}
    for event_id, element in zip(ids, events, strict=True):
        record = await store.get_event(event_id)
        deliveries = await store.list_deliveries(DeliveryFilter())
        routed[element["id"]] = (
            record.state,
            sorted((d.route, d.destination) for d in deliveries if d.event_id == event_id),
        )
    chain = Chain(cfg, None, clock)
    for element in events:
        decision = await chain.evaluate(
            element, {"event_id": "x", "source": "provider", "received_at": 1_000.0}, dry_run=True
        )
        planned = sorted((t.route, t.destination) for t in decision.targets)
        assert (decision.state, planned) == routed[element["id"]], element
    assert routed[1] == ("unmatched", [])
    assert routed[2] == ("routed", [("archive", "archive"), ("failures", "ops")])
    text = await explain(cfg, [(e, json.dumps(e)) for e in events], "provider")
    assert "-> crm: SKIPPED (enabled: false: not delivered)" in text
    assert "result: UNMATCHED: matching routes lead only to disabled destinations: crm" in text
    assert "routed to 2 destination(s): ops (route failures), archive (route archive)" in text
