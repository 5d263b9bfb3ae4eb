"""The ordering filter against a real SQLite store: stale statuses are not forwarded."""

from __future__ import annotations

import itertools
import textwrap
from typing import Any

import pytest
from gateway_plugins.ordering import position

from gateway.config import load_config_text
from gateway.routing.chain import Chain
from gateway.store import store_from_url

CONFIG = """
destinations:
  a: {type: file, path: a.jsonl}
  b: {type: file, path: b.jsonl}
routes:
  - {name: all, to: a}
"""


class Clock:
    def now(self) -> float:
        return 1602874300.0

    async def sleep(self, seconds: float) -> None:
        pass


_ids = itertools.count(1)


def status(kind: str, at: str, uuid: str = "m-1", **extra: Any) -> dict[str, Any]:
    event = {"read": "read", "unread": "read", "sent": "sent"}.get(kind, "delivered")
    return {
        "message_uuid": uuid,
        "channel_type": "SMS",
        "callback_event": event,
        "status": kind,
        "status_time": f"2020-10-16T{at}Z",
        **extra,
    }


def price(at: str, amount: float, uuid: str = "m-1") -> dict[str, Any]:
    return {
        "message_uuid": uuid,
        "channel_type": "SMS",
        "callback_event": "price",
        "parts": 1,
        "price": amount,
        "currency": "EUR",
        "price_time": f"2020-10-16T{at}Z",
    }


@pytest.fixture
async def store(tmp_path):
    s = store_from_url("sqlite:///gw.db", tmp_path)
    await s.open()
    yield s
    await s.close()


def make_chain(store: Any, config: str = CONFIG) -> Chain:
    return Chain(load_config_text(textwrap.dedent(config), env={}), store, Clock())


async def run(chain: Chain, event: dict[str, Any], event_id: str | None = None, **kw: Any) -> Any:
    meta = {
        "event_id": event_id or f"ev-{next(_ids)}",
        "source": "revicom",
        "received_at": 1602874300.0,
    }
    return await chain.evaluate(event, meta, **kw)


async def states(chain: Chain, *events: dict[str, Any]) -> list[str]:
    return [(await run(chain, e)).state for e in events]


async def test_a_sent_arriving_after_delivered_is_suppressed_with_the_reason(store):
    chain = make_chain(store)
    assert (await run(chain, status("delivered", "18:51:13"))).state == "routed"
    d = await run(chain, status("sent", "18:50:02"))
    assert (d.state, d.targets) == ("filtered", [])
    assert d.reason == (
        "route 'all': filter 'ordering': out of order: delivered at 2020-10-16T18:51:13Z was"
        " already forwarded for message m-1; sent at 2020-10-16T18:50:02Z does not supersede it"
    )
    assert next(s for s in d.trace if s.stage == "filter").ok is False


async def test_final_statuses_outrank_sent_even_when_sent_has_a_later_time(store):
    chain = make_chain(store)
    assert await states(
        chain,
        status("sent", "18:50:00"),
        status("delivered", "18:51:00"),
        status("sent", "18:59:00"),
    ) == ["routed", "routed", "filtered"]


async def test_among_final_statuses_the_later_time_wins(store):
    chain = make_chain(store)
    assert await states(
        chain,
        status("delivered", "18:51:00"),
        status("undelivered", "19:00:00"),
        status("unsent", "18:55:00"),
    ) == ["routed", "routed", "filtered"]


async def test_a_repeat_of_the_same_status_and_time_is_suppressed(store):
    chain = make_chain(store)
    assert await states(chain, status("sent", "18:50:00"), status("sent", "18:50:00")) == [
        "routed",
        "filtered",
    ]


async def test_read_is_its_own_dimension(store):
    chain = make_chain(store)
    assert await states(
        chain,
        status("delivered", "18:51:00"),
        status("read", "18:58:00"),
        status("unread", "18:57:00"),
        status("sent", "18:50:00"),
    ) == ["routed", "routed", "filtered", "filtered"]


async def test_for_prices_the_latest_price_time_wins(store):
    chain = make_chain(store)
    assert await states(
        chain, price("18:51:14", 1.25), price("18:52:00", 1.5), price("18:51:30", 1.0)
    ) == ["routed", "routed", "filtered"]


async def test_messages_are_tracked_separately(store):
    chain = make_chain(store)
    assert await states(
        chain, status("delivered", "18:51:00", uuid="m-1"), status("sent", "18:50:00", uuid="m-2")
    ) == ["routed", "routed"]


async def test_clicks_inbound_and_foreign_events_pass_untouched(store):
    chain = make_chain(store)
    click = {
        "message_uuid": "m-1",
        "channel_type": "SMS",
        "callback_event": "click",
        "short_url": "https://s/x",
        "click_time": "2020-10-16T18:00:00Z",
    }
    inbound = {**status("inbound_sent", "18:00:00"), "callback_event": "inbound_sent"}
    assert (
        await states(
            chain, status("delivered", "18:51:00"), click, click, inbound, inbound, {"anything": 1}
        )
        == ["routed"] * 6
    )
    assert position(click) is None and position(inbound) is None


async def test_the_last_forwarded_status_is_kept_per_route(store):
    chain = make_chain(
        store,
        """
        destinations:
          a: {type: file, path: a.jsonl}
          b: {type: file, path: b.jsonl}
        routes:
          - {name: finals, match: {status: [delivered, undelivered, unsent]}, to: a}
          - {name: everything, to: b}
    """,
    )
    d = await run(chain, status("delivered", "18:51:00"))
    assert [(t.route, t.destination) for t in d.targets] == [("finals", "a"), ("everything", "b")]
    d = await run(chain, status("sent", "18:50:00"))
    assert d.state == "filtered"
    assert "route 'everything': filter 'ordering'" in d.reason


async def test_a_route_can_switch_ordering_off(store):
    chain = make_chain(
        store,
        """
        destinations: {a: {type: file, path: a.jsonl}, b: {type: file, path: b.jsonl}}
        routes:
          - {name: audit, to: a, ordering: false}
          - {name: current, to: b}
    """,
    )
    await run(chain, status("delivered", "18:51:00"))
    d = await run(chain, status("sent", "18:50:00"))
    assert [(t.route, t.destination) for t in d.targets] == [("audit", "a")]


async def test_automatic_ordering_can_be_switched_off_and_listed_per_route(store):
    chain = make_chain(
        store,
        """
        destinations: {a: {type: file, path: a.jsonl}, b: {type: file, path: b.jsonl}}
        filters:
          ordering: {automatic: false}
        routes:
          - {name: raw, to: a}
          - {name: current, to: b, filter: [ordering]}
    """,
    )
    await run(chain, status("delivered", "18:51:00"))
    d = await run(chain, status("sent", "18:50:00"))
    assert [(t.route, t.destination) for t in d.targets] == [("raw", "a")]
    assert [s.name for s in d.trace if s.stage == "filter"] == ["ordering"]


async def test_listing_ordering_explicitly_does_not_apply_it_twice(store):
    chain = make_chain(
        store,
        """
        destinations: {a: {type: file, path: a.jsonl}}
        filters:
          strict: {type: ordering}
        routes:
          - {name: r, to: a, filter: [strict]}
    """,
    )
    d = await run(chain, status("delivered", "18:51:00"))
    assert d.state == "routed"
    assert [s.name for s in d.trace if s.stage == "filter"] == ["strict"]


async def test_the_same_event_evaluated_again_is_kept(store):
    """The router may evaluate an event twice (crash before its result was committed)."""
    chain = make_chain(store)
    event = status("delivered", "18:51:00")
    assert (await run(chain, event, "ev-same")).state == "routed"
    assert (await run(chain, event, "ev-same")).state == "routed"
    assert (await run(chain, event, "ev-other")).state == "filtered"


async def test_the_protection_survives_a_restart(tmp_path):
    first = store_from_url("sqlite:///gw.db", tmp_path)
    await first.open()
    await run(make_chain(first), status("delivered", "18:51:00"))
    await first.close()
    second = store_from_url("sqlite:///gw.db", tmp_path)
    await second.open()
    try:
        assert (await run(make_chain(second), status("sent", "18:50:00"))).state == "filtered"
    finally:
        await second.close()


async def test_a_dry_run_reads_marks_but_writes_none(store):
    chain = make_chain(store)
    await run(chain, status("sent", "18:50:00"))
    key = "ordering:all:m-1:status"
    before = await store.get_mark(key)
    assert before is not None and before[0].startswith("1|")
    d = await run(chain, status("delivered", "18:51:00"), dry_run=True)
    assert d.state == "routed"
    assert await store.get_mark(key) == before
    # The stored mark still counts in a dry run.
    assert (await run(chain, status("sent", "18:49:00"), dry_run=True)).state == "filtered"


def test_ranks_sort_by_dimension_rank_then_time():
    sent_late = position(status("sent", "23:00:00"))
    delivered_early = position(status("delivered", "01:00:00"))
    assert sent_late[0] == delivered_early[0] == "status"
    assert sent_late[1] < delivered_early[1]
    # Offsets are normalised to UTC before comparing.
    a = position({"status": "delivered", "status_time": "2020-10-16T21:00:00+03:00"})
    b = position({"status": "delivered", "status_time": "2020-10-16T18:30:00Z"})
    assert a[1] < b[1]
