"""Gateways on one PostgreSQL database: work shared without double sends, a killed instance's
work finished by the other, and outages answered with 503 and recovered from without a restart.

Real subprocesses, the machine's PostgreSQL (a scratch database per test, dropped afterwards),
a real HTTP receiver on loopback, and for the network outage a loopback TCP proxy the test cuts.
Duplicates can only come from ambiguous outcomes (a try sent but not recorded); they are
counted and bounded, never hidden.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import event
from gateway_process import GatewayProcess
from postgres_support import scratch_database, terminate_connections
from receiver import Receiver, Reply
from tcp_proxy import TcpProxy
from test_redis_e2e import AUTH, PATH, resends, tally, wait_until

from gateway.delivery.dispatcher import RECORDING_BACKLOG
from gateway.store.postgres import PostgresStore

pytestmark = pytest.mark.slow

CONCURRENCY = 4
LEASE = 6.0
#: Requests in flight at once from the test: a provider's burst, bounded so that a loaded
#: machine answers each within the client's timeout.
POSTERS = 16

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
  crm: {type: webhook, url: "RECEIVER/crm", timeout: 4s}
  audit: {type: webhook, url: "RECEIVER/audit", timeout: 4s}
routes:
  - name: everything
    to: [crm, audit]
"""

Factory = Callable[..., GatewayProcess]


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database() as url:
        yield url


@pytest.fixture
async def watch(database: str) -> AsyncIterator[PostgresStore]:
    """The test's own view of the shared database."""
    store = PostgresStore(database)
    await store.open()
    yield store
    await store.close()


def config(store_url: str, rx: Receiver) -> str:
    return (
        CONFIG.replace("STORE", store_url)
        .replace("RECEIVER", rx.url)
        .replace("CONCURRENCY", str(CONCURRENCY))
        .replace("LEASE", f"{LEASE:g}")
    )


async def start(factory: Factory, text: str, tmp_path: Path, *names: str) -> list[GatewayProcess]:
    gateways = []
    for name in names:
        workdir = tmp_path / name
        workdir.mkdir()
        gateways.append(await asyncio.to_thread(factory, text, workdir=workdir))
    return gateways


async def post_spread(gateways: list[GatewayProcess], events: list[dict[str, Any]]) -> int:
    """Post each event to one gateway in turn (a round-robin load balancer), `POSTERS` at a
    time; returns how many were accepted. Every answer must be a 200."""
    slots = asyncio.Semaphore(POSTERS)
    async with httpx.AsyncClient(auth=AUTH, timeout=60) as client:

        async def post(i: int, ev: dict[str, Any]) -> httpx.Response:
            async with slots:
                return await client.post(gateways[i % len(gateways)].url(PATH), json=[ev])

        answers = await asyncio.gather(*(post(i, ev) for i, ev in enumerate(events)))
    assert [a.status_code for a in answers] == [200] * len(events)
    return sum(a.json()["accepted"] for a in answers)


async def delivered(store: PostgresStore) -> int:
    return (await store.counts())["deliveries"].get("delivered", 0)


async def test_two_gateways_deliver_each_callback_once_per_destination(
    gateway_factory: Factory,
    database: str,
    watch: PostgresStore,
    tmp_path: Path,
) -> None:
    async with Receiver(default=Reply(200, b"ok", stall=0.01)) as rx:
        one, two = await start(gateway_factory, config(database, rx), tmp_path, "one", "two")
        events = [event() for _ in range(300)]
        assert await post_spread([one, two], events) == 300
        # Each resend goes to the other gateway than the first post: a duplicate all the same.
        assert await post_spread([two, one], events) == 0

        async def all_delivered() -> bool:
            return await delivered(watch) == 600

        await wait_until(all_delivered, 60, "600 deliveries")
        per_target, per_id = tally(rx)
        expected = {(p, ev["message_uuid"]) for ev in events for p in ("/crm", "/audit")}
        assert set(per_target) == expected
        assert len(per_id) == 600, "one delivery id per event and destination"
        unrecorded, retried = await resends(rx, watch)
        assert unrecorded == {}, "no two gateways ever sent the same delivery"
        print(f"\nsent again after a recorded ambiguous outcome (timeout): {len(retried)}")
        assert await queued(watch) == []
        for gw in (one, two):
            assert "Traceback" not in gw.logs()


async def queued(store: PostgresStore) -> list[dict[str, Any]]:
    """Deliveries still pending or in flight."""
    return [s for s in await store.queue_stats(time.time()) if s["state"] != "dead"]


async def test_a_killed_gateways_work_is_finished_by_the_other(
    gateway_factory: Factory,
    database: str,
    watch: PostgresStore,
    tmp_path: Path,
) -> None:
    # A slow receiver keeps both gateways' slots busy, so `one` dies with tries in flight.
    async with Receiver(default=Reply(200, b"ok", stall=0.15)) as rx:
        one, two = await start(gateway_factory, config(database, rx), tmp_path, "one", "two")
        events = [event() for _ in range(150)]
        assert await post_spread([one, two], events) == 150
        await rx.wait_for(60, timeout=30)
        one.kill()
        killed_at = time.time()

        async def all_delivered() -> bool:
            return await delivered(watch) == 300

        await wait_until(all_delivered, 60, "300 deliveries after the kill")
        per_target, per_id = tally(rx)
        expected = {(p, ev["message_uuid"]) for ev in events for p in ("/crm", "/audit")}
        assert set(per_target) == expected, "every event reached every destination: lost 0"
        assert len(per_id) == 300, "one delivery id per event and destination"
        unrecorded, retried = await resends(rx, watch)
        # Only tries `one` had sent but not recorded when it died are sent again, once each.
        assert len(unrecorded) <= 2 * CONCURRENCY * RECORDING_BACKLOG
        assert set(unrecorded.values()) <= {1}
        first_sent: dict[str, float] = {}
        for r in rx.requests:
            first_sent.setdefault(r.headers["webhook-id"], r.at)
        assert all(first_sent[i] < killed_at + LEASE / 2 for i in unrecorded)
        print(
            f"\nsent again: {len(unrecorded)} in flight in the killed gateway, "
            f"{len(retried)} after a recorded timeout"
        )
        assert "Traceback" not in two.logs()


async def post_until(
    gw: GatewayProcess, stop: asyncio.Event, answers: list[tuple[int, dict[str, Any]]]
) -> None:
    """Post one fresh callback after another until `stop`; record (status, event)."""
    async with httpx.AsyncClient(auth=AUTH, timeout=60) as client:
        while not stop.is_set():
            ev = event()
            r = await client.post(gw.url(PATH), json=[ev])
            answers.append((r.status_code, ev))


async def test_terminated_connections_answer_503_and_recover_without_a_restart(
    gateway_factory: Factory,
    database: str,
    watch: PostgresStore,
    tmp_path: Path,
) -> None:
    async with Receiver(default=Reply(200, b"ok")) as rx:
        (gw,) = await start(gateway_factory, config(database, rx), tmp_path, "one")
        pid = gw.proc.pid if gw.proc else None
        stop = asyncio.Event()
        answers: list[tuple[int, dict[str, Any]]] = []
        posters = [asyncio.create_task(post_until(gw, stop, answers)) for _ in range(POSTERS)]
        killed = 0
        for _ in range(5):
            await more_answers(answers, 20)
            killed += await asyncio.to_thread(terminate_connections, database)
        await more_answers(answers, 20)
        stop.set()
        await asyncio.gather(*posters)
        assert killed >= 5, "connections were terminated under load"
        statuses = {s for s, _ in answers}
        assert statuses <= {200, 503}, f"only commits (200) and refusals (503): {statuses}"
        accepted = [ev for s, ev in answers if s == 200]
        wanted = {(p, ev["message_uuid"]) for ev in accepted for p in ("/crm", "/audit")}

        async def all_delivered() -> bool:  # nothing acknowledged is lost
            return wanted <= set(tally(rx)[0])

        await wait_until(all_delivered, 60, f"{len(wanted)} acknowledged deliveries")
        assert gw.proc is not None and gw.proc.pid == pid and gw.proc.poll() is None
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{gw.base}/readyz")).status_code == 200
        print(
            f"\n{len(answers)} answers, {len(accepted)} accepted, "
            f"{sum(1 for s, _ in answers if s == 503)} refused with 503; "
            f"{killed} connections terminated"
        )
        assert "Traceback" not in gw.logs()


async def more_answers(answers: list[Any], n: int) -> None:
    """Until `n` more answers than now have come."""
    target = len(answers) + n

    async def enough() -> bool:
        return len(answers) >= target

    await wait_until(enough, 30, f"{n} more answers")


async def test_an_unreachable_database_is_503_and_everything_resumes_by_itself(
    gateway_factory: Factory,
    database: str,
    watch: PostgresStore,
    tmp_path: Path,
) -> None:
    host_port = database.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    async with Receiver(default=Reply(200, b"ok")) as rx, TcpProxy(host, int(port)) as proxy:
        through_proxy = database.replace(host_port, f"127.0.0.1:{proxy.port}")
        (gw,) = await start(gateway_factory, config(through_proxy, rx), tmp_path, "one")
        before = [event() for _ in range(20)]
        assert await post_spread([gw], before) == 20

        await proxy.cut()
        async with httpx.AsyncClient(auth=AUTH, timeout=60) as client:
            away = await asyncio.gather(
                *(client.post(gw.url(PATH), json=[event()]) for _ in range(10))
            )
            ready = await client.get(f"{gw.base}/readyz")
        assert [r.status_code for r in away] == [503] * 10, "never a 2xx while it is away"
        assert ready.status_code == 503

        proxy.restore()
        after = [event() for _ in range(20)]

        async def answers_again() -> bool:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{gw.base}/readyz")).status_code == 200

        await wait_until(answers_again, 15, "/readyz 200 after the outage")
        assert await post_spread([gw], after) == 20

        async def all_delivered() -> bool:
            return await delivered(watch) == 80

        await wait_until(all_delivered, 30, "80 deliveries after the outage")
        per_target, _ = tally(rx)
        assert {uuid for _, uuid in per_target} == {ev["message_uuid"] for ev in before + after}
        assert "Traceback" not in gw.logs()
