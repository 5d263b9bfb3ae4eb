"""Two gateway processes on one Redis: posts spread across both are delivered once per
destination; after a `kill -9` of one, the other finishes its work.

Real subprocesses, a real Redis server (127.0.0.1:6379, a fresh key prefix per test) and a real
HTTP receiver on loopback. Duplicates can only come from ambiguous outcomes: tries the killed
process had sent but not recorded; they are counted and bounded, never hidden.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from e2e_helpers import event
from gateway_process import GatewayProcess
from receiver import Receiver, Reply
from redis_support import delete_prefix, store_url, unique_prefix

from gateway.delivery.dispatcher import RECORDING_BACKLOG
from gateway.store.redis import RedisStore

pytestmark = pytest.mark.slow

AUTH = ("revicom", "e2e-secret")
PATH = "/callbacks/revicom"
CONCURRENCY = 4
LEASE = 5.0

CONFIG = """
server: {host: 127.0.0.1}
store: "STORE"
sources:
  revicom:
    path: /callbacks/revicom
    auth:
      basic: {username: revicom, password: e2e-secret}
delivery: {concurrency: CONCURRENCY, lease: LEASEs}
destinations:
  crm: {type: webhook, url: "RECEIVER/crm", timeout: 2s}
  audit: {type: webhook, url: "RECEIVER/audit", timeout: 2s}
routes:
  - name: everything
    to: [crm, audit]
"""

Factory = Callable[..., GatewayProcess]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = unique_prefix()
    yield p
    await delete_prefix(p)


async def start_two(
    factory: Factory,
    prefix: str,
    rx: Receiver,
    tmp_path: Any,
) -> tuple[GatewayProcess, GatewayProcess]:
    text = (
        CONFIG.replace("STORE", store_url(prefix))
        .replace("RECEIVER", rx.url)
        .replace("CONCURRENCY", str(CONCURRENCY))
        .replace("LEASE", f"{LEASE:g}")
    )
    gateways = []
    for name in ("one", "two"):
        workdir = tmp_path / name
        workdir.mkdir()
        gateways.append(await asyncio.to_thread(factory, text, workdir=workdir))
    return gateways[0], gateways[1]


async def post_spread(gateways: list[GatewayProcess], events: list[dict[str, Any]]) -> int:
    """Post each event to one gateway in turn (a round-robin load balancer); returns how many
    were accepted. Every answer must be a 200."""
    async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
        answers = await asyncio.gather(
            *(
                client.post(gateways[i % len(gateways)].url(PATH), json=[ev])
                for i, ev in enumerate(events)
            )
        )
    assert [a.status_code for a in answers] == [200] * len(events)
    return sum(a.json()["accepted"] for a in answers)


def tally(rx: Receiver) -> tuple[dict[tuple[str, str], int], Counter[str]]:
    """Requests per (destination path, message_uuid), and per webhook-id."""
    per_target: Counter[tuple[str, str]] = Counter()
    per_id: Counter[str] = Counter()
    for r in rx.requests:
        (ev,) = json.loads(r.body)
        per_target[(r.path, ev["message_uuid"])] += 1
        per_id[r.headers["webhook-id"]] += 1
    return per_target, per_id


async def resends(rx: Receiver, store: RedisStore) -> tuple[dict[str, int], dict[str, int]]:
    """Delivery ids the receiver got more than once, split by cause: ``(unrecorded, retried)``.

    `unrecorded`: sends no attempt record accounts for (a process died between sending and
    recording; another took the delivery over when the lease ran out). `retried`: sends after
    an ambiguous outcome the gateway recorded (a timeout: the receiver may have got it)."""
    unrecorded, retried = {}, {}
    for delivery_id, n in tally(rx)[1].items():
        if n == 1:
            continue
        record, attempts = await store.get_delivery(delivery_id)
        assert record.state == "delivered"
        outcomes = [a.outcome for a in attempts]
        assert outcomes[-1] == "delivered" and set(outcomes[:-1]) <= {"retry"}, attempts
        if n > len(attempts):
            unrecorded[delivery_id] = n - len(attempts)
        if len(attempts) > 1:
            retried[delivery_id] = len(attempts) - 1
    return unrecorded, retried


async def wait_until(predicate: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)  # polling a subprocess's progress, not timing


@pytest.fixture
async def watch(prefix: str) -> AsyncIterator[RedisStore]:
    """The test's own view of the shared store."""
    store = RedisStore(store_url(prefix))
    await store.open()
    yield store
    await store.close()


async def delivered_count(store: RedisStore) -> int:
    return (await store.counts())["deliveries"].get("delivered", 0)


async def test_posts_spread_across_two_gateways_are_delivered_once_per_destination(
    gateway_factory: Factory,
    prefix: str,
    watch: RedisStore,
    tmp_path: Any,
) -> None:
    async with Receiver(default=Reply(200, b"ok", stall=0.02)) as rx:
        one, two = await start_two(gateway_factory, prefix, rx, tmp_path)
        events = [event() for _ in range(120)]
        # Every event is posted twice, once to each gateway: the resend is dropped once.
        assert await post_spread([one, two], events) == 120
        assert await post_spread([two, one], events) == 0

        async def all_delivered() -> bool:
            return await delivered_count(watch) == 240

        await wait_until(all_delivered, 60, "240 deliveries")
        per_target, per_id = tally(rx)
        expected = {(p, ev["message_uuid"]) for ev in events for p in ("/crm", "/audit")}
        assert set(per_target) == expected
        assert len(per_id) == 240, "one delivery id per event and destination"
        unrecorded, retried = await resends(rx, watch)
        assert unrecorded == {}, "no two gateways ever sent the same delivery"
        print(f"\nsent again after a recorded ambiguous outcome (timeout): {len(retried)}")
        for gw in (one, two):
            assert "Traceback" not in gw.logs()


async def test_a_killed_gateways_work_is_finished_by_the_other(
    gateway_factory: Factory,
    prefix: str,
    watch: RedisStore,
    tmp_path: Any,
) -> None:
    # A slow receiver keeps both gateways' slots busy, so `one` dies with tries in flight.
    async with Receiver(default=Reply(200, b"ok", stall=0.15)) as rx:
        one, two = await start_two(gateway_factory, prefix, rx, tmp_path)
        events = [event() for _ in range(150)]
        assert await post_spread([one, two], events) == 150
        await rx.wait_for(60, timeout=30)
        one.kill()
        killed_at = time.time()

        async def all_delivered() -> bool:
            return await delivered_count(watch) == 300

        await wait_until(all_delivered, 90, "300 deliveries after the kill")
        per_target, per_id = tally(rx)
        expected = {(p, ev["message_uuid"]) for ev in events for p in ("/crm", "/audit")}
        assert set(per_target) == expected, "every event reached every destination"
        assert len(per_id) == 300, "one delivery id per event and destination"
        unrecorded, retried = await resends(rx, watch)
        # Tries `one` had sent but not recorded when it died, each sent once more by `two`, all
        # first sent before the kill. At most what an engine keeps between sending and
        # recording: CONCURRENCY sending plus the recording backlog, per destination.
        # "Before the kill" by arrival time: a request the dead process had already written
        # can reach the receiver a moment after the kill, but `two` cannot take that delivery
        # over before its lease (LEASE seconds) runs out.
        assert len(unrecorded) <= 2 * CONCURRENCY * RECORDING_BACKLOG
        assert set(unrecorded.values()) <= {1}
        first_sent = {}
        for r in rx.requests:
            first_sent.setdefault(r.headers["webhook-id"], r.at)
        assert all(first_sent[i] < killed_at + LEASE / 2 for i in unrecorded)
        print(
            f"\nsent again: {len(unrecorded)} in flight in the killed gateway, "
            f"{len(retried)} after a recorded timeout"
        )
        assert "Traceback" not in two.logs()
