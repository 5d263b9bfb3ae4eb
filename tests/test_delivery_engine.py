"""The delivery engine against a real SQLite store and a real loopback receiver.

Retry schedules run on a manual clock: the engine's waits end only when the test advances it,
so next_attempt_at values are checked exactly and nothing sleeps for timing.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
from delivery_harness import SAMPLE, EngineHarness
from receiver import Receiver, Reply

from gateway import hookimpl


def webhook(rx: Receiver, extra: str = "", name: str = "crm", path: str = "/hook") -> str:
    return f"""
destinations:
  {name}: {{type: webhook, url: "{rx.url}{path}"{extra}}}
retry: {{attempts: 3, initial: 10s, max_interval: 10m, max_age: 1h}}
"""


@pytest.fixture
async def rx():
    async with Receiver() as receiver:
        yield receiver


async def test_a_delivery_reaches_the_receiver_once_with_its_id_and_original_body(tmp_path, rx):
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        record, attempts = await h.until(did, lambda r: r.state == "delivered")
    assert len(rx.requests) == 1
    got = rx.requests[0]
    assert got.body == ("[" + SAMPLE + "]").encode()  # byte-for-byte, "1.10" included
    assert got.headers["webhook-id"] == did
    assert got.headers["content-type"] == "application/json"
    assert (record.attempts, record.last_status, record.last_error) == (1, 200, None)
    assert [a.outcome for a in attempts] == ["delivered"]


async def test_a_500_is_retried_at_the_persisted_time_and_then_delivered(tmp_path, rx):
    rx.script(Reply(500, b"upstream down"))
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        t0 = h.clock.now()
        await h.engine.start()
        record, attempts = await h.until(did, lambda r: r.attempts == 1 and r.state == "pending")
        # initial 10s, jittered down by at most 25%
        assert t0 + 7.5 <= record.next_attempt_at <= t0 + 10
        assert record.last_error == "HTTP 500: upstream down"
        assert [a.outcome for a in attempts] == ["retry"]
        await h.advance(5)
        await h.settle()
        assert len(rx.requests) == 1  # not yet due
        await h.advance(5)
        record, attempts = await h.until(did, lambda r: r.state == "delivered")
    assert record.attempts == 2
    assert [a.outcome for a in attempts] == ["retry", "delivered"]
    assert rx.requests[0].headers["webhook-id"] == rx.requests[1].headers["webhook-id"] == did


async def test_a_400_is_dead_at_once_with_its_reason(tmp_path, rx):
    rx.script(Reply(400, b'{"error": "bad field"}'))
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        record, attempts = await h.until(did, lambda r: r.state == "dead")
    assert record.attempts == 1
    assert record.last_status == 400
    assert record.last_error == 'HTTP 400: {"error": "bad field"}'
    assert len(rx.requests) == 1 and len(attempts) == 1


async def test_attempts_is_the_total_number_of_tries(tmp_path, rx):
    rx.default = Reply(503)
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        for tries in (1, 2):
            await h.until(did, lambda r, n=tries: r.attempts == n and r.state == "pending")
            await h.advance(3600 / 4)
        record, attempts = await h.until(did, lambda r: r.state == "dead")
    assert len(rx.requests) == 3
    assert record.attempts == 3
    assert record.last_error == "HTTP 503 (gave up after 3 tries)"
    assert [a.outcome for a in attempts] == ["retry", "retry", "dead"]


async def test_a_429_waits_for_retry_after_and_does_not_use_up_attempts(tmp_path, rx):
    rx.script(Reply(429, headers={"Retry-After": "1200"}), Reply(429, headers={"Retry-After": "5"}))
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        t0 = h.clock.now()
        await h.engine.start()
        record, _ = await h.until(did, lambda r: r.last_status == 429)
        # honoured although above max_interval (10m)
        assert (record.state, record.attempts, record.next_attempt_at) == ("pending", 0, t0 + 1200)
        await h.advance(1200)
        record, _ = await h.until(did, lambda r: len(rx.requests) == 2 and r.state == "pending")
        assert (record.attempts, record.next_attempt_at) == (0, t0 + 1205)
        await h.advance(5)
        record, attempts = await h.until(did, lambda r: r.state == "delivered")
    assert record.attempts == 1
    assert [a.outcome for a in attempts] == ["throttled", "throttled", "delivered"]


async def test_a_429_with_retry_after_holds_the_whole_destination(tmp_path, rx):
    rx.script(Reply(429, headers={"Retry-After": "60"}))
    async with EngineHarness(tmp_path, webhook(rx, ", concurrency: 1")) as h:
        first, second = await h.add("crm", 2)
        t0 = h.clock.now()
        await h.engine.start()
        await h.until(first, lambda r: r.last_status == 429)
        await h.settle()
        assert len(rx.requests) == 1  # the second was not sent into the 429
        assert h.engine.status()["crm"]["held_until"] == t0 + 60
        await h.advance(60)
        for did in (first, second):
            await h.until(did, lambda r: r.state == "delivered")
    assert len(rx.requests) == 3


async def test_a_retry_after_beyond_max_age_makes_the_delivery_dead(tmp_path, rx):
    rx.script(Reply(429, headers={"Retry-After": "7200"}))
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        record, _ = await h.until(did, lambda r: r.state == "dead")
    assert "would pass max_age" in record.last_error


async def test_a_410_kills_the_delivery_and_pauses_the_destination_loudly(tmp_path, rx, caplog):
    rx.script(Reply(410, b"gone"))
    caplog.set_level(logging.ERROR, "gateway.delivery")
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [first] = await h.add("crm")
        await h.engine.start()
        record, _ = await h.until(first, lambda r: r.state == "dead")
        assert "paused" in record.last_error
        mark = await h.store.get_mark("paused:crm", scope="gateway")
        assert mark is not None and "410" in json.loads(mark[1])["reason"]
        assert any("PAUSED" in r.message for r in caplog.records if r.levelno == logging.ERROR)
        assert h.engine.status()["crm"]["paused"]
        [second] = await h.add("crm")
        await h.settle()
        assert len(rx.requests) == 1
        assert (await h.get(second))[0].state == "pending"
        await h.engine.resume("crm")
        await h.until(second, lambda r: r.state == "delivered")
        assert await h.store.get_mark("paused:crm", scope="gateway") is None


async def test_a_stalled_receiver_is_a_timeout_and_retried(tmp_path, rx):
    rx.script(Reply(stall=math.inf))
    async with EngineHarness(tmp_path, webhook(rx, ", timeout: 200ms")) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        record, _ = await h.until(did, lambda r: r.attempts == 1)
    assert record.state == "pending"
    assert record.last_error.startswith("timed out after 0.2s")


async def test_a_connection_refused_is_retried(tmp_path):
    async with Receiver() as gone:
        url = gone.url
    config = f"destinations:\n  crm: {{type: webhook, url: '{url}/x'}}\n"
    async with EngineHarness(tmp_path, config) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        record, _ = await h.until(did, lambda r: r.attempts == 1)
    assert record.state == "pending"
    assert record.last_error.startswith("connection error")


async def test_a_slow_destination_does_not_delay_another(tmp_path, rx):
    rx.script(*[Reply(stall=math.inf)] * 4, path="/slow")
    config = f"""
destinations:
  slow: {{type: webhook, url: "{rx.url}/slow", timeout: 5s, concurrency: 4}}
  fast: {{type: webhook, url: "{rx.url}/fast"}}
"""
    async with EngineHarness(tmp_path, config) as h:
        await h.add("slow", 4)
        fast = await h.add("fast", 5)
        await h.engine.start()
        for did in fast:
            await h.until(did, lambda r: r.state == "delivered", timeout=2)
        assert h.engine.status()["slow"]["in_flight"] == 4


async def test_concurrency_bounds_tries_in_flight(tmp_path, rx):
    rx.default = Reply(200, stall=0.05)
    config = webhook(rx, ", concurrency: 2")
    async with EngineHarness(tmp_path, config) as h:
        ids = await h.add("crm", 6)
        await h.engine.start()
        for did in ids:
            await h.until(did, lambda r: r.state == "delivered")
    assert rx.max_in_flight == 2


async def test_rate_limit_is_a_token_bucket_on_the_engine_clock(tmp_path, rx):
    config = webhook(rx, ", rate_limit: {rate: 1/s, burst: 2}")
    async with EngineHarness(tmp_path, config) as h:
        await h.engine.start()  # the bucket starts full at the engine's start
        ids = await h.add("crm", 5)
        await rx.wait_for(2)
        await h.settle()
        assert len(rx.requests) == 2
        await h.advance(1)
        await rx.wait_for(3)
        await h.settle()
        assert len(rx.requests) == 3
        await h.advance(2)
        await rx.wait_for(5)
        for did in ids:
            await h.until(did, lambda r: r.state == "delivered")


async def test_a_delivery_leased_by_a_crashed_worker_is_taken_over_after_its_lease(tmp_path, rx):
    async with EngineHarness(tmp_path, webhook(rx)) as h:
        [did] = await h.add("crm")
        claimed = await h.store.claim_deliveries("crashed", "crm", 10, 30.0, h.clock.now())
        assert [d.id for d in claimed] == [did]
        await h.engine.start()
        await h.settle()
        assert rx.requests == []
        await h.advance(31)
        record, _ = await h.until(did, lambda r: r.state == "delivered")
    assert record.attempts == 1


async def test_two_engines_on_one_store_deliver_each_delivery_once(tmp_path, rx):
    rx.default = Reply(200, stall=0.01)
    async with EngineHarness(tmp_path, webhook(rx, ", concurrency: 3")) as h:
        other = h.new_engine("test-2")
        ids = await h.add("crm", 30)
        await h.engine.start()
        await other.start()
        try:
            for did in ids:
                await h.until(did, lambda r: r.state == "delivered")
        finally:
            await other.stop(1)
    seen = [r.headers["webhook-id"] for r in rx.requests]
    assert sorted(seen) == sorted(ids)


async def test_stop_lets_a_quick_try_finish_and_releases_a_stalled_one(tmp_path, rx):
    rx.script(Reply(200, stall=0.1), path="/quick")
    rx.script(Reply(200, stall=math.inf), path="/stuck")
    config = f"""
destinations:
  quick: {{type: webhook, url: "{rx.url}/quick"}}
  stuck: {{type: webhook, url: "{rx.url}/stuck"}}
"""
    async with EngineHarness(tmp_path, config) as h:
        [quick] = await h.add("quick")
        [stuck] = await h.add("stuck")
        await h.engine.start()
        await rx.wait_for(2)
        await h.engine.stop(grace=0.5)
        q, _ = await h.get(quick)
        s, attempts = await h.get(stuck)
    assert q.state == "delivered"
    assert (s.state, s.attempts, attempts) == ("pending", 0, [])
    assert s.next_attempt_at <= h.clock.now()


async def test_errors_are_scrubbed_of_secrets_before_they_are_stored(tmp_path, rx):
    rx.script(Reply(400, echo_headers=True))
    extra = ', headers: {Authorization: "Bearer s3cr3t-token-value"}'
    async with EngineHarness(tmp_path, webhook(rx, extra)) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        record, attempts = await h.until(did, lambda r: r.state == "dead")
    assert rx.requests[0].headers["authorization"] == "Bearer s3cr3t-token-value"
    assert "s3cr3t-token-value" not in record.last_error
    assert "***" in record.last_error
    assert "s3cr3t-token-value" not in (attempts[0].error or "")


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[dict, dict]] = []

    @hookimpl
    async def delivery_finished(self, delivery, outcome):
        self.seen.append((delivery, outcome))


class Broken:
    @hookimpl
    def delivery_finished(self, delivery, outcome):
        raise RuntimeError("observer bug")


async def test_delivery_finished_hook_sees_each_try_and_a_failing_one_is_ignored(tmp_path, rx):
    rx.script(Reply(502))
    observer = Observer()
    async with EngineHarness(tmp_path, webhook(rx), extra_plugins=[Broken(), observer]) as h:
        [did] = await h.add("crm")
        await h.engine.start()
        await h.until(did, lambda r: r.state == "pending" and r.attempts == 1)
        await h.advance(10)
        await h.until(did, lambda r: r.state == "delivered")
        await h.settle()
    states = [(d["id"], d["attempts"], o["state"], o["status"]) for d, o in observer.seen]
    assert states == [(did, 1, "pending", 502), (did, 2, "delivered", 200)]
    assert h.engine.counters[("crm", "retry")] == 1
    assert h.engine.counters[("crm", "delivered")] == 1


class Exploding:
    class Options:  # any class works as an options model for the registry check
        pass


async def test_a_destination_that_raises_is_retried_with_the_error(tmp_path):
    from pydantic import BaseModel

    class Options(BaseModel):
        pass

    class Boom:
        def __init__(self, name, options, services):
            pass

        async def deliver(self, delivery):
            raise RuntimeError("plugin bug")

    Boom.Options = Options

    class Plugin:
        @hookimpl
        def register_destinations(self, register):
            register("boom", Boom)

    config = "destinations:\n  b: {type: boom}\n"
    async with EngineHarness(tmp_path, config, extra_plugins=[Plugin()]) as h:
        [did] = await h.add("b")
        await h.engine.start()
        record, _ = await h.until(did, lambda r: r.attempts == 1)
    assert record.state == "pending"
    assert record.last_error == "RuntimeError: plugin bug"


async def test_a_disabled_destination_gets_no_dispatcher(tmp_path, rx):
    config = webhook(rx, ", enabled: false")
    async with EngineHarness(tmp_path, config) as h:
        await h.add("crm")
        await h.engine.start()
        await h.settle()
    assert h.engine.status() == {}
    assert rx.requests == []


async def test_claims_run_ahead_of_the_slots_but_requests_stay_bounded(tmp_path, rx):
    """PREFETCH: a freed slot starts a claimed delivery at once; the destination still never
    sees more than `concurrency` requests, and stopping hands the waiting ones back."""
    from gateway.delivery.dispatcher import PREFETCH

    rx.default = Reply(200, stall=math.inf)
    async with EngineHarness(tmp_path, webhook(rx, ", concurrency: 2")) as h:
        ids = await h.add("crm", 20)
        await h.engine.start()
        await rx.wait_for(2)
        await h.settle()
        states = [(await h.get(did))[0].state for did in ids]
        assert len(rx.requests) == 2
        assert states.count("in_flight") == 2 * (1 + PREFETCH)
        await h.engine.stop(grace=0)
        after = [(await h.get(did))[0] for did in ids]
    assert {(r.state, r.attempts) for r in after} == {("pending", 0)}
    assert rx.max_in_flight == 2


async def test_a_claimed_delivery_whose_lease_ran_short_is_handed_back_not_sent(tmp_path, rx):
    """A delivery that waited for a slot until less than half a try's time was left on its
    lease is released and claimed again, never sent on a lease about to expire."""
    rx.default = Reply(200, stall=0.3)
    async with EngineHarness(tmp_path, webhook(rx, ", concurrency: 1")) as h:
        released: list[str] = []
        release = h.store.release

        async def spy(ids, now):
            released.extend(ids)
            return await release(ids, now)

        h.store.release = spy  # type: ignore[method-assign]
        first, *waiting = await h.add("crm", 3)
        await h.engine.start()
        await rx.wait_for(1)
        h.clock.advance(20)  # lease 30 s, a try 27 s: 7 s left for the two that wait
        for did in [first, *waiting]:
            await h.until(did, lambda r: r.state == "delivered")
    assert sorted(released) == sorted(waiting)
    assert sorted(r.headers["webhook-id"] for r in rx.requests) == sorted([first, *waiting])
