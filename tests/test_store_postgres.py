"""What only the PostgreSQL store has: migrations under an advisory lock, forced
``synchronous_commit``, group commit that isolates a failing call, safe resends of a group,
notifications to other instances, and outages (a connection ended, the server unreachable).

The machine's PostgreSQL; every test has a schema of its own (see tests/postgres_support.py).
The common behaviour of all stores is in tests/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres_support import (
    database_url,
    postgres_backend,
    schema_url,
    scratch_schema,
    terminate_connections,
)
from tcp_proxy import TcpProxy

from gateway.errors import ConfigError, StoreError
from gateway.store import AttemptRecord, FinishedEvent, IncomingEvent, Lease, NewDelivery
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_schema import MIGRATIONS

T0 = 1_700_000_000.0
SOURCE = "revicom"


def item(key: str, raw: str | None = None) -> IncomingEvent:
    return IncomingEvent(
        raw or json.dumps({"message_uuid": f"u-{key}", "k": key}), key, f"u-{key}", "delivered"
    )


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[[], PostgresStore]]:
    """Unopened stores on one fresh schema; every store made is closed at the end."""
    made: list[PostgresStore] = []
    async with postgres_backend(tmp_path) as factory:

        def new() -> PostgresStore:
            made.append(factory())
            return made[-1]

        yield new
        for s in made:
            await s.close()


async def sql(store: PostgresStore, query: str, args: Any = None) -> list[tuple[Any, ...]]:
    async def op(c: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cur = await c.execute(query, args)
        return await cur.fetchall() if cur.description else []

    return await store.pool.run(op)


async def test_instances_starting_together_create_the_schema_once(make: Callable) -> None:
    stores = [make() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    assert await sql(stores[0], "SELECT MAX(version) FROM cg_schema_version") == [
        (len(MIGRATIONS),)
    ]
    again = make()
    await again.open()  # an up-to-date schema is left as it is
    assert await sql(again, "SELECT count(*) FROM cg_schema_version") == [(len(MIGRATIONS),)]


async def test_a_schema_of_the_first_release_is_upgraded_in_place() -> None:
    # Version 1 kept pauses and the silence alarm among the plugins' marks; version 2 moves
    # them out of retention's and the plugins' reach.
    with scratch_schema() as (url, _):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(MIGRATIONS[0])
            conn.execute(
                "CREATE TABLE cg_schema_version (version integer NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute("INSERT INTO cg_schema_version (version) VALUES (1)")
            conn.execute(
                "INSERT INTO marks VALUES ('paused:crm', '', '{\"reason\": \"m\"}', 0),"
                " ('ordering:all:u:status', '2', 'x', 0)"
            )
        store = PostgresStore(url)
        await store.open()
        try:
            assert await store.get_mark("paused:crm") is None
            assert await store.get_mark("paused:crm", scope="gateway") == ("", '{"reason": "m"}')
            assert await store.get_mark("ordering:all:u:status") == ("2", "x")
        finally:
            await store.close()


async def test_a_schema_newer_than_the_gateway_refuses_to_open(make: Callable) -> None:
    first = make()
    await first.open()
    await sql(first, "INSERT INTO cg_schema_version (version) VALUES (%s)", (99,))
    with pytest.raises(StoreError, match="version 99, newer than this gateway's"):
        await make().open()


async def test_synchronous_commit_off_is_turned_on() -> None:
    with scratch_schema() as (url, schema):
        # Two libpq options, separated by a space (%20): the URL reaches libpq as written.
        store = PostgresStore(f"{url}%20-csynchronous_commit%3Doff")
        await store.open()
        try:
            assert await sql(store, "SHOW synchronous_commit") == [("on",)]
            assert await sql(store, "SHOW search_path") == [(schema,)]
        finally:
            await store.close()


async def test_one_failing_call_of_a_group_fails_alone(make: Callable) -> None:
    store = make()
    await store.open()
    await sql(store, "ALTER TABLE events ADD CONSTRAINT no_boom CHECK (raw NOT LIKE '%%boom%%')")
    results = await asyncio.gather(
        store.ingest(SOURCE, [item("a")], T0),
        store.ingest(SOURCE, [item("b"), item("c", raw='{"boom": 1}')], T0),
        store.ingest(SOURCE, [item("d")], T0),
        return_exceptions=True,
    )
    assert [getattr(r, "accepted", None) for r in results] == [1, None, 1]
    assert isinstance(results[1], StoreError)
    # Nothing of the failed call is kept, not even the dedupe key of its good item.
    assert (await store.ingest(SOURCE, [item("b")], T0 + 1)).accepted == 1


async def in_flight(make: Callable, n: int) -> PostgresStore:
    """An open store holding `n` deliveries ``msg_00``... (to ``d0``...), all claimed."""
    store = make()
    await store.open()
    await store.ingest(SOURCE, [item("a")], T0)
    (event,) = await store.claim_events("me", 10, 60, T0)
    news = [NewDelivery(f"msg_{i:02}", event.id, "r", f"d{i}", T0) for i in range(n)]
    await store.finish_events([FinishedEvent(event.id, "routed", news, T0)])
    for i in range(n):
        assert len(await store.claim_deliveries("w", f"d{i}", 1, 60, T0)) == 1
    return store


async def test_tries_finishing_together_share_a_transaction_and_a_bad_one_fails_alone(
    make: Callable,
) -> None:
    store = await in_flight(make, 40)
    groups = store._attempts
    assert groups is not None

    def record(i: int, error: str | None = None) -> Any:
        return store.finish_attempt(
            f"msg_{i:02}",
            AttemptRecord(T0, T0 + 1, "retry", 503, error),
            "pending",
            T0 + 30,
            True,
            T0 + 2,
        )

    before = groups.groups
    assert await asyncio.gather(*(record(i) for i in range(20))) == [None] * 20
    assert groups.groups - before <= 2  # IN_FLIGHT groups at most, not twenty transactions

    await sql(store, "ALTER TABLE attempts ADD CONSTRAINT no_boom CHECK (error <> 'boom')")
    results = await asyncio.gather(
        *(record(i, "boom" if i == 27 else "HTTP 503") for i in range(20, 40)),
        return_exceptions=True,
    )
    assert [i + 20 for i, r in enumerate(results) if r is not None] == [27]
    assert isinstance(results[7], StoreError)
    states = dict(await sql(store, "SELECT id, state FROM deliveries"))
    assert states.pop("msg_27") == "in_flight"  # its lease runs out and it is tried again
    assert set(states.values()) == {"pending"}
    assert (await sql(store, "SELECT COUNT(*), MAX(number) FROM attempts"))[0] == (39, 1)


async def test_a_deliverys_second_outcome_waits_for_the_group_holding_its_first(
    make: Callable,
) -> None:
    """Two groups may be on their way at once, on two connections: a delivery's later outcome
    must not be numbered or applied before its earlier one commits."""
    store = await in_flight(make, 30)
    # Idle connections ready, so that a second group starts while the first is on its way.
    await asyncio.gather(*(sql(store, "SELECT pg_sleep(0.05)") for _ in range(4)))

    def record(i: int, outcome: str, state: str, at: float) -> Any:
        return store.finish_attempt(
            f"msg_{i:02}", AttemptRecord(at, at + 1, outcome, 200, None), state, None, True, at
        )

    for round_ in range(5):
        first = range(round_ * 6, round_ * 6 + 6)
        await asyncio.gather(
            *(record(i, "retry", "pending", T0) for i in first),
            record(first[0], "delivered", "delivered", T0 + 10),
        )
        rows = await sql(
            store,
            "SELECT number, outcome FROM attempts WHERE delivery_id = %s ORDER BY number",
            (f"msg_{first[0]:02}",),
        )
        assert rows == [(1, "retry"), (2, "delivered")]
        record_, _ = await store.get_delivery(f"msg_{first[0]:02}")
        assert (record_.state, record_.attempts) == ("delivered", 2)


async def test_the_footprint_is_the_store_tables_with_their_indexes(make: Callable) -> None:
    store = make()
    await store.open()
    empty = (await store.footprint()).bytes
    assert empty is not None and empty > 0
    assert (await store.footprint()).free_bytes is None
    for n in range(5):
        batch = [item(f"k{n}-{i}", json.dumps({"pad": os.urandom(1000).hex()})) for i in range(200)]
        await store.ingest(SOURCE, batch, T0)
    grown = (await store.footprint()).bytes
    assert grown is not None and grown >= empty + 1000 * 2000 // 2  # hex: TOAST halves it at most
    ((events,),) = await sql(store, "SELECT pg_total_relation_size('events')")
    assert events < grown


async def test_a_group_sent_again_after_a_lost_answer_reports_its_own_events(
    make: Callable,
) -> None:
    store = make()
    await store.open()
    await store.ingest(SOURCE, [item("seen")], T0)
    groups = store._ingest
    assert groups is not None
    loop = asyncio.get_running_loop()
    from gateway.store.postgres_ingest import _Call, _result, _row

    call = _Call(SOURCE, [item("new"), item("seen")], T0, None, loop.create_future())
    call.rows = [_row(call, i, set()) for i in call.items]
    # The first send commits, and its answer is lost; the second send must not take the
    # group's own events for another instance's.
    await store.pool.run(lambda c: groups._insert(c, [call], again=False))
    inserted = await store.pool.run(lambda c: groups._insert(c, [call], again=True))
    result = _result(call, inserted)
    assert (result.accepted, result.duplicates) == (1, 1)
    assert (await store.counts())["events"] == {"received": 2}


async def test_a_nul_character_in_a_field_is_stored_escaped(make: Callable) -> None:
    store = make()
    await store.open()
    odd = IncomingEvent('{"x": "\\u0000"}', "key\x00", "uuid\x00", "sent")
    result = await store.ingest(SOURCE, [odd], T0)
    assert result.accepted == 1
    event = await store.get_event(result.event_ids[0])
    assert event is not None and event.message_uuid == "uuid\\u0000"
    assert (await store.ingest(SOURCE, [odd], T0 + 300)).duplicates == 1


async def test_other_instances_hear_of_new_work_and_not_of_their_own(make: Callable) -> None:
    a, b = make(), make()
    await a.open()
    await b.open()
    heard: dict[str, list[tuple[str, str | None]]] = {"a": [], "b": []}
    arrived = asyncio.Event()

    def listener(name: str) -> Callable[[str, str | None], None]:
        def on_work(kind: str, destination: str | None) -> None:
            heard[name].append((kind, destination))
            arrived.set()

        return on_work

    assert a.watch(listener("a")) and b.watch(listener("b"))
    for s in (a, b):
        assert s._listener is not None
        await asyncio.wait_for(s._listener.connected.wait(), 10)

    async def next_heard() -> None:
        await asyncio.wait_for(arrived.wait(), 10)
        arrived.clear()

    leased = await a.ingest(SOURCE, [item("leased")], T0, lease=Lease("a", T0 + 30))
    unleased = await a.ingest(SOURCE, [item("free")], T0)
    await next_heard()
    assert heard["b"] == [("events", None)], "only events any router may take are announced"
    event_id = leased.event_ids[0]
    delivery = NewDelivery("msg_1", event_id, "r", "crm", T0)
    await a.finish_events([FinishedEvent(event_id, "routed", [delivery], T0)])
    await next_heard()
    assert heard["b"][-1] == ("deliveries", "crm")
    assert heard["a"] == [], "a store is not told of its own writes"
    assert unleased.accepted == 1


async def test_ended_connections_are_replaced_without_an_error(make: Callable) -> None:
    store = make()
    await store.open()
    await asyncio.gather(*(store.ping() for _ in range(5)))  # several idle connections
    url = store._conninfo.split("?")[0]
    assert await asyncio.to_thread(terminate_connections, url) >= 1
    result = await store.ingest(SOURCE, [item("after")], T0)
    assert result.accepted == 1
    assert (await store.counts())["events"] == {"received": 1}


async def test_an_unreachable_server_fails_calls_at_once_and_they_work_when_it_is_back() -> None:
    with scratch_schema() as (url, _):
        async with TcpProxy("127.0.0.1", 5432) as proxy:
            store = PostgresStore(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
            await store.open()
            try:
                assert (await store.ingest(SOURCE, [item("before")], T0)).accepted == 1
                await proxy.cut()
                for call in (
                    store.ping(),
                    store.ingest(SOURCE, [item("away")], T0),
                    store.claim_deliveries("w", "crm", 10, 30, T0),
                ):
                    with pytest.raises(StoreError, match="postgresql"):
                        await asyncio.wait_for(call, 10)
                proxy.restore()
                await store.ping()
                assert (await store.ingest(SOURCE, [item("away")], T0)).accepted == 1
            finally:
                await store.close()


async def test_opening_an_unreachable_server_is_one_clear_error() -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        await proxy.cut()
        store = PostgresStore(f"postgresql://gw:secret-pw@127.0.0.1:{proxy.port}/gw")
        with pytest.raises(StoreError) as caught:
            await store.open()
        message = str(caught.value)
        assert message.startswith("postgresql: ") and "\n" not in message
        assert "secret-pw" not in message and "secret-pw" not in repr(store)


def test_a_bad_pool_size_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="pool_size"):
        PostgresStore("postgresql://u@h/db?pool_size=many")


def test_database_urls_are_built_for_the_test_server() -> None:
    assert database_url("x").endswith("/x")
    assert schema_url("x", "s").endswith("/x?options=-csearch_path%3Ds")
