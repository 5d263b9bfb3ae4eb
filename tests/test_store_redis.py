"""Redis store specifics (the shared behaviour is in test_store_contract.py, which runs against
Redis too): several instances on one server, lease takeover, the persistence check, errors,
key layout. Needs the Redis server at 127.0.0.1:6379; fails when it is not running."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis_support import REDIS_URL, delete_prefix, store_url, unique_prefix

import gateway.store.redis as redis_module
from gateway.errors import StoreError
from gateway.ids import new_id
from gateway.store import (
    AttemptRecord,
    DeliveryFilter,
    IncomingEvent,
    NewDelivery,
    store_from_url,
)
from gateway.store.base import RetentionPolicy
from gateway.store.redis import RedisStore
from gateway.store.redis_codec import DEFAULT_PREFIX, Persistence, split_url

T0 = 1_700_000_000.0
LEASE = 30.0

Opener = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = unique_prefix()
    yield p
    await delete_prefix(p)


@pytest.fixture
async def open_store(prefix: str) -> AsyncIterator[Opener]:
    """Opens another store object ("another gateway instance") on the same prefix."""
    opened: list[RedisStore] = []

    async def opener(url: str | None = None) -> RedisStore:
        s = RedisStore(url or store_url(prefix))
        await s.open()
        opened.append(s)
        return s

    yield opener
    for s in opened:
        await s.close()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


def item(key: str) -> IncomingEvent:
    return IncomingEvent(f'{{"message_uuid": "u-{key}"}}', key, f"u-{key}", "delivered")


# -- several instances -------------------------------------------------------------------------


async def test_two_instances_receiving_the_same_resends_at_once_store_each_key_once(
    open_store: Opener,
) -> None:
    a, b = await open_store(), await open_store()
    keys = [f"k{i}" for i in range(40)]
    # Every body holds all keys in a different order, posted 10 times to each instance at once.
    bodies = [[item(k) for k in keys[i:] + keys[:i]] for i in range(20)]
    results = await asyncio.gather(
        *(s.ingest("revicom", body, T0) for s, body in zip([a, b] * 10, bodies, strict=True))
    )
    assert sum(r.accepted for r in results) == 40
    assert sum(r.duplicates for r in results) == 40 * 19
    stored = [i for r in results for i in r.event_ids]
    assert len(set(stored)) == 40
    events = [await b.get_event(i) for i in stored]
    assert sorted(e.message_uuid for e in events) == sorted(f"u-{k}" for k in keys)


async def test_an_instance_that_dies_has_its_leased_work_taken_over_after_the_lease(
    open_store: Opener,
) -> None:
    a, b = await open_store(), await open_store()
    result = await a.ingest("revicom", [item("x"), item("y")], T0)
    x, y = result.event_ids
    assert [e.id for e in await a.claim_events("router-a", 10, LEASE, T0)] == [x, y]
    dx = NewDelivery(new_id("msg"), x, "all", "crm", T0)
    await a.finish_event(x, "routed", [dx], T0 + 1)
    assert [d.id for d in await a.claim_deliveries("worker-a", "crm", 10, LEASE, T0 + 1)] == [dx.id]
    await a.close()  # instance a dies holding the lease of event y and delivery dx

    assert await b.claim_events("router-b", 10, LEASE, T0 + LEASE - 1) == []
    assert await b.claim_deliveries("worker-b", "crm", 10, LEASE, T0 + LEASE) == []
    assert await b.next_due("crm") == T0 + 1 + LEASE
    assert [e.id for e in await b.claim_events("router-b", 10, LEASE, T0 + LEASE + 1)] == [y]
    taken = await b.claim_deliveries("worker-b", "crm", 10, LEASE, T0 + LEASE + 2)
    assert [d.id for d in taken] == [dx.id]
    assert taken[0].lease_until == T0 + 2 * LEASE + 2 and taken[0].attempts == 0


async def test_concurrent_claims_from_two_instances_split_a_backlog_without_overlap(
    open_store: Opener,
) -> None:
    a, b = await open_store(), await open_store()
    ids = (await a.ingest("s", [item(f"k{i}") for i in range(60)], T0)).event_ids
    news = []
    for event_id in ids:
        await a.claim_events("r", 100, LEASE, T0)
        new = NewDelivery(new_id("msg"), event_id, "all", "crm", T0)
        await a.finish_event(event_id, "routed", [new], T0)
        news.append(new.id)
    batches = await asyncio.gather(
        *(s.claim_deliveries(f"w{i}", "crm", 7, LEASE, T0 + 1) for i, s in enumerate([a, b] * 6))
    )
    claimed = [d.id for batch in batches for d in batch]
    assert len(claimed) == len(set(claimed)) == 60
    assert sorted(claimed) == sorted(news)


# -- persistence check -------------------------------------------------------------------------


async def test_open_reads_the_servers_persistence_and_warns_when_events_can_be_lost(
    open_store: Opener,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {}
    for name in ("appendonly", "appendfsync", "save"):
        config.update(await raw.config_get(name))
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        store = await open_store()
    assert store.persistence == Persistence(
        config["appendonly"], config["appendfsync"], config["save"]
    )
    warnings = [r for r in caplog.records if r.name == "gateway.store"]
    if store.persistence.risk is None:
        assert warnings == []
    else:
        assert [r.levelno for r in warnings] == [logging.WARNING]
        assert store.persistence.risk in warnings[0].getMessage()


@pytest.fixture
async def no_config_user(raw: aioredis.Redis) -> AsyncIterator[str]:
    """A Redis ACL user that may do everything but CONFIG (as on managed Redis services)."""
    name, password = f"cg-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await raw.execute_command(
        "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all", "-config"
    )
    yield f"redis://{name}:{password}@{REDIS_URL.split('://', 1)[1].split('/')[0]}/0"
    await raw.execute_command("ACL", "DELUSER", name)


async def test_a_server_that_refuses_config_is_tolerated_with_a_warning(
    open_store: Opener,
    no_config_user: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        store = await open_store(f"{no_config_user}?prefix={prefix}")
    assert store.persistence.error is not None
    assert "could not read the Redis persistence settings" in store.persistence.risk
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "gateway.store")
    assert (await store.ingest("s", [item("a")], T0)).accepted == 1, "the store still works"
    assert "password" not in repr(store) and no_config_user not in repr(store)


@pytest.mark.parametrize(
    ("settings", "risk"),
    [
        (("yes", "always", ""), None),
        (("yes", "everysec", "3600 1"), "up to about 1s"),
        (("yes", "no", ""), "the OS decides"),
        (("no", "everysec", "3600 1 300 100"), "since the last snapshot"),
        (("no", "everysec", ""), "lost when Redis restarts"),
    ],
)
def test_persistence_settings_name_what_can_be_lost(
    settings: tuple[str, str, str], risk: str | None
) -> None:
    found = Persistence(*settings).risk
    assert found is None if risk is None else risk in found


# -- errors ------------------------------------------------------------------------------------


async def test_opening_a_store_whose_server_is_down_raises_store_error() -> None:
    store = RedisStore("redis://127.0.0.1:1/0?prefix=cg-test-nothing:&socket_connect_timeout=1")
    with pytest.raises(StoreError):
        await store.open()
    with pytest.raises(StoreError):
        await store.ingest("s", [item("a")], T0)


class Proxy:
    """A TCP forwarder to Redis that can be cut, to lose the server under an open store."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


async def test_losing_the_server_turns_every_call_into_store_error(
    open_store: Opener, prefix: str
) -> None:
    proxy = Proxy()
    port = await proxy.start()
    store = await open_store(f"redis://127.0.0.1:{port}/0?prefix={prefix}")
    assert (await store.ingest("s", [item("a")], T0)).accepted == 1
    await store.ping()
    await proxy.cut()
    with pytest.raises(StoreError):
        await store.ingest("s", [item("b")], T0)
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.claim_deliveries("w", "crm", 10, LEASE, T0)
    with pytest.raises(StoreError):
        await store.counts()


# -- layout and encoding -----------------------------------------------------------------------


def test_the_url_names_the_prefix_and_keeps_everything_else_for_redis_py() -> None:
    assert split_url("redis://h:6379/0") == ("redis://h:6379/0", DEFAULT_PREFIX)
    assert split_url("rediss://:s3cret@h:6380/2?prefix=cg:&socket_timeout=3") == (
        "rediss://:s3cret@h:6380/2?socket_timeout=3",
        "cg:",
    )
    assert isinstance(store_from_url("redis://127.0.0.1:6379/0"), RedisStore)
    assert store_from_url("rediss://u:p@example.com:6380/1?prefix=x:").prefix == "x:"


async def test_every_key_lives_under_the_prefix(
    open_store: Opener, prefix: str, raw: aioredis.Redis
) -> None:
    store = await open_store()
    event_id = (await store.ingest("s", [item("a")], T0)).event_ids[0]
    await store.claim_events("r", 10, LEASE, T0)
    await store.finish_event(
        event_id, "routed", [NewDelivery(new_id("msg"), event_id, "all", "crm", T0)], T0
    )
    await store.advance_mark("order:u-a", "1", "v", T0)
    keys = [k async for k in raw.scan_iter(match=prefix + "*")]
    assert len(keys) > 10
    assert await delete_prefix(prefix) == len(keys)
    assert await store.counts() == {"events": {}, "deliveries": {}}


async def test_fractional_times_round_trip_exactly(open_store: Opener) -> None:
    # Lua's tostring keeps 14 digits; the scripts must store the strings they are given.
    store = await open_store()
    now, due = 1_700_000_000.123456, 1_700_000_123.987654321
    event_id = (await store.ingest("s", [item("a")], now)).event_ids[0]
    assert (await store.get_event(event_id)).received_at == now
    await store.claim_events("r", 10, LEASE, now)
    new = NewDelivery(new_id("msg"), event_id, "all", "crm", due)
    await store.finish_event(event_id, "routed", [new], now)
    assert await store.next_due("crm") == due
    (claimed,) = await store.claim_deliveries("w", "crm", 1, 0.001, due)
    assert (claimed.next_attempt_at, claimed.lease_until) == (due, due + 0.001)
    assert (claimed.received_at, claimed.created_at) == (now, now)


async def test_mark_ranks_compare_byte_by_byte_whatever_the_server_locale(
    open_store: Opener,
) -> None:
    store = await open_store()
    assert await store.advance_mark("k", "B", "first", T0) == (True, None)
    assert await store.advance_mark("k", "a", "second", T0) == (True, "first")  # 'B' < 'a'
    assert await store.advance_mark("k", "B", "third", T0) == (False, "second")
    assert await store.advance_mark("k", "a", "same", T0) == (False, "second")
    assert await store.advance_mark("k", "ab", "longer", T0) == (True, "second")
    assert await store.get_mark("k") == ("ab", "longer")


async def test_bulk_operations_work_in_batches(
    open_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_module, "BATCH", 3)
    store = await open_store()
    ids = (await store.ingest("s", [item(f"k{i}") for i in range(10)], T0)).event_ids
    await store.claim_events("r", 100, LEASE, T0)
    dids = []
    for event_id in ids:
        new = NewDelivery(new_id("msg"), event_id, "all", "crm", T0)
        await store.finish_event(event_id, "routed", [new], T0)
        dids.append(new.id)
    await store.claim_deliveries("w", "crm", 100, LEASE, T0)
    await store.release(dids, T0 + 1)
    assert len(await store.claim_deliveries("w", "crm", 100, LEASE, T0 + 1)) == 10
    for did in dids:
        await store.finish_attempt(did, _ok(T0 + 2), "delivered", None, True, T0 + 2)
    assert len(await store.replay_deliveries(None, DeliveryFilter(state="delivered"), T0 + 3)) == 10
    await store.claim_deliveries("w", "crm", 100, LEASE, T0 + 3)
    for did in dids:
        await store.finish_attempt(did, _ok(T0 + 4), "delivered", None, True, T0 + 4)
    windows = dict.fromkeys(("dedupe", "events", "delivered", "dead", "quarantined", "marks"), 0.5)
    purged = await store.purge(RetentionPolicy(**windows, batch=3), T0 + 5)
    assert purged == {
        "events": 10,
        "quarantined": 0,
        "delivered": 10,
        "dead": 0,
        "attempts": 20,
        "dedupe_keys": 10,
        "marks": 0,
    }
    assert await store.list_deliveries(DeliveryFilter()) == []
    assert await store.queue_stats(T0 + 5) == []


def _ok(at: float) -> AttemptRecord:
    return AttemptRecord(at, at + 0.1, "delivered", 200, None)


async def test_queue_stats_count_per_destination_and_state_with_the_oldest(
    open_store: Opener,
) -> None:
    store = await open_store()
    ids = (await store.ingest("s", [item("a"), item("b")], T0)).event_ids
    await store.claim_events("r", 10, LEASE, T0)
    for n, event_id in enumerate(ids):
        news = [NewDelivery(new_id("msg"), event_id, "all", d, T0) for d in ("crm", "slack")]
        await store.finish_event(event_id, "routed", news, T0 + n)
    await store.claim_deliveries("w", "crm", 1, LEASE, T0 + 5)
    stats = sorted(await store.queue_stats(T0 + 5), key=lambda r: (r["destination"], r["state"]))
    assert stats == [
        {"destination": "crm", "state": "in_flight", "count": 1, "oldest": T0},
        {"destination": "crm", "state": "pending", "count": 1, "oldest": T0 + 1},
        {"destination": "slack", "state": "pending", "count": 2, "oldest": T0},
    ]


# -- grouped calls (redis_batch) ---------------------------------------------------------------


async def test_concurrent_ingests_share_script_calls_and_keep_their_own_results(
    open_store: Opener,
) -> None:
    store = await open_store()
    batcher = store.batchers["ingest"]
    bodies = [[item(f"k{i}"), item(f"k{i + 1}")] for i in range(0, 100, 2)] + [[item("k0")]]
    results = await asyncio.gather(*(store.ingest("s", body, T0) for body in bodies))
    assert batcher.calls == len(bodies) and batcher.groups < len(bodies) // 4
    assert [r.outcomes for r in results] == [("accepted", "accepted")] * 50 + [("duplicate",)]
    assert len({i for r in results for i in r.event_ids}) == 100
    first = await store.get_event(results[0].event_ids[1])
    assert first.message_uuid == "u-k1" and first.received_at == T0


async def test_a_failing_call_in_a_group_fails_alone_and_keeps_nothing(
    open_store: Opener,
    prefix: str,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = await open_store()
    await raw.set(prefix + "e:evt_TAKEN", "not an event")
    made = iter(["evt_A", "evt_TAKEN", "evt_C"])
    monkeypatch.setattr(redis_module, "new_id", lambda kind, now=None: next(made))
    groups = store.batchers["ingest"].groups
    results = await asyncio.gather(
        *(store.ingest("s", [item(k)], T0) for k in ("a", "b", "c")), return_exceptions=True
    )
    assert store.batchers["ingest"].groups == groups + 1, "one script call for the three"
    assert [r.event_ids for r in (results[0], results[2])] == [("evt_A",), ("evt_C",)]
    assert isinstance(results[1], StoreError) and "evt_TAKEN is taken" in str(results[1])
    assert await raw.get(prefix + "e:evt_TAKEN") == "not an event"
    monkeypatch.undo()
    again = await store.ingest("s", [item("b"), item("a")], T0 + 1)
    assert again.outcomes == ("accepted", "duplicate"), "the failed call kept no dedupe key"
    assert await store.counts() == {"events": {"received": 3}, "deliveries": {}}


async def test_a_key_of_the_wrong_type_fails_every_call_before_any_write(
    open_store: Opener,
    prefix: str,
    raw: aioredis.Redis,
) -> None:
    store = await open_store()
    await raw.set(prefix + "ev:due", "oops")
    with pytest.raises(StoreError, match="ev:due holds a string"):
        await store.ingest("s", [item("a")], T0)
    assert not await raw.exists(prefix + "dedupe")


async def test_grouped_finish_event_and_finish_attempt_fail_only_the_broken_call(
    open_store: Opener,
    prefix: str,
    raw: aioredis.Redis,
) -> None:
    store = await open_store()
    ids = (await store.ingest("s", [item(f"k{i}") for i in range(20)], T0)).event_ids
    await store.claim_events("r", 100, LEASE, T0)
    await raw.delete(prefix + "e:" + ids[3])
    await raw.set(prefix + "e:" + ids[3], "broken")
    news = {e: NewDelivery(new_id("msg"), e, "all", "crm", T0) for e in ids}
    done = await asyncio.gather(
        *(store.finish_event(e, "routed", [news[e]], T0) for e in ids), return_exceptions=True
    )
    assert [i for i, r in enumerate(done) if r is not None] == [3]
    assert isinstance(done[3], StoreError) and "WRONGTYPE" in str(done[3])
    assert store.batchers["finish_event"].groups < 5
    claimed = await store.claim_deliveries("w", "crm", 100, LEASE, T0)
    assert sorted(d.id for d in claimed) == sorted(news[e].id for e in ids if e != ids[3])
    await raw.set(prefix + "a:" + claimed[0].id, "broken")  # its attempt list
    done = await asyncio.gather(
        *(
            store.finish_attempt(d.id, _ok(T0 + 1), "delivered", None, True, T0 + 1)
            for d in claimed
        ),
        return_exceptions=True,
    )
    assert [i for i, r in enumerate(done) if r is not None] == [0]
    assert store.batchers["finish_attempt"].groups < 5
    counts = (await store.counts())["deliveries"]
    assert counts == {"in_flight": 1, "delivered": len(claimed) - 1}


async def test_close_answers_the_calls_still_queued(open_store: Opener) -> None:
    store = await open_store()
    calls = [asyncio.create_task(store.ingest("s", [item(f"k{i}")], T0)) for i in range(30)]
    await asyncio.sleep(0)
    await store.close()
    assert sum(r.accepted for r in await asyncio.gather(*calls)) == 30
    with pytest.raises(StoreError):
        await store.ingest("s", [item("late")], T0)


async def test_concurrent_mark_advances_in_one_group_apply_in_call_order(
    open_store: Opener,
) -> None:
    store = await open_store()
    ranks = ["3", "1", "5", "4", "", "7"]
    found = await asyncio.gather(*(store.advance_mark("k", r, f"v{r}", T0) for r in ranks))
    assert found == [
        (True, None),
        (False, "v3"),
        (True, "v3"),
        (False, "v5"),
        (False, "v5"),
        (True, "v5"),
    ]
    assert store.batchers["advance_mark"].groups == 1
    await store.set_mark("e", "", T0, rank="1")
    assert await store.advance_mark("e", "2", "x", T0) == (True, ""), "an empty value is a value"


def test_commands_are_packed_in_c_exactly_as_redis_py_packs_them() -> None:
    from redis.asyncio.connection import Connection, SSLConnection

    from gateway.store.redis_codec import c_packed

    packed = c_packed(Connection)
    assert packed is not Connection, "hiredis is a dependency"
    assert issubclass(c_packed(SSLConnection), SSLConnection)
    args = ("EVALSHA", "f" * 40, 0, "cg:", 2, "é ü", b"\x00\xff", 1.5, 1_700_000_000.123456, -7, "")
    for command in (args, ("CONFIG GET", "appendfsync")):
        assert b"".join(packed().pack_command(*command)) == b"".join(
            Connection().pack_command(*command)
        )
    with pytest.raises(redis_module.RedisError):
        packed().pack_command("SET", "k", True)


async def test_data_of_the_previous_release_is_upgraded_in_place(
    open_store: Opener, raw: aioredis.Redis, prefix: str
) -> None:
    first = await open_store()
    ids = (await first.ingest("s", [item("a"), item("b"), item("c")], T0)).event_ids
    await first.claim_events("r", 10, LEASE, T0)
    news = [
        NewDelivery(new_id("msg"), e, "all", d, T0)
        for e, d in zip(ids, ("ok", "dead", "paused"), strict=True)
    ]
    for new in news:
        await first.finish_event(new.event_id, "routed", [new], T0)
    await first.claim_deliveries("w", "ok", 10, LEASE, T0)
    await first.claim_deliveries("w", "dead", 10, LEASE, T0)
    await first.finish_attempt(news[0].id, _ok(T0), "delivered", None, True, T0)
    await first.finish_attempt(
        news[1].id, AttemptRecord(T0, T0, "dead", 400, "HTTP 400"), "dead", None, True, T0
    )
    await first.set_mark("paused:paused", '{"reason": "maintenance"}', T0, scope="gateway")
    await first.close()
    # What the previous release left: no version, pauses among the plugin marks, no dead
    # index, events without their delivery ids.
    await raw.delete(prefix + "schema", prefix + "dl:dead")
    await raw.rename(prefix + "g:paused:paused", prefix + "m:paused:paused")
    await raw.zadd(prefix + "marks", {"paused:paused": T0})
    for event_id in ids:
        await raw.hdel(prefix + "e:" + event_id, "dls")

    store = await open_store()
    assert await raw.get(prefix + "schema") == "1"
    assert await store.get_mark("paused:paused") is None
    assert await store.get_mark("paused:paused", scope="gateway") == (
        "",
        '{"reason": "maintenance"}',
    )
    windows = dict.fromkeys(("dedupe", "events", "delivered", "dead", "quarantined", "marks"), 1.0)
    removed = await store.purge(RetentionPolicy(**windows), T0 + 100)
    assert (removed["delivered"], removed["dead"], removed["events"], removed["marks"]) == (
        1,
        1,
        2,
        0,
    )
    assert (await store.get_event(ids[2])).state == "routed"  # its delivery is pending
    assert await store.get_mark("paused:paused", scope="gateway") is not None
