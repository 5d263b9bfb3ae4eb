"""The silence alarm: ``source_silent`` after ``expect_within`` without traffic, ``source_resumed``
when traffic returns, each raised exactly once even by several processes sharing one store.

Unit tests drive `SilenceWatcher.check()` with a manual clock over a real SQLite store; one
end-to-end test shows the alarm event routed to a file destination by a real gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from gateway_process import GatewayProcess
from manual_clock import ManualClock

from gateway.ops.silence import RESUMED, SILENT, SilenceWatcher
from gateway.store import Store, store_from_url

T0 = 1_700_000_000.0
WITHIN = 60.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = store_from_url("sqlite:///x.db", tmp_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


async def watcher(store: Store, clock: ManualClock, **expect: float) -> SilenceWatcher:
    """A watcher as `start()` leaves it (its start noted as the last traffic), without the
    background loop, so each test decides when a check runs."""
    w = SilenceWatcher(store, clock, expect or {"revicom": WITHIN})
    await w.start()
    await w.stop()
    return w


async def alarms(store: Store) -> list[dict[str, Any]]:
    """Every alarm event stored, oldest first."""
    events = await store.list_events("received")
    return [e.payload | {"_source": e.source} for e in events if e.event in (SILENT, RESUMED)]


async def test_a_quiet_source_raises_source_silent_once_expect_within_has_passed(store, clock):
    w = await watcher(store, clock)
    clock.advance(WITHIN - 1)
    assert await w.check() == []
    clock.advance(1)
    assert await w.check() == [SILENT]
    [event] = await alarms(store)
    assert event == {
        "callback_event": "source_silent",
        "source": "revicom",
        "last_received_at": "2023-11-14T22:13:20Z",  # T0
        "silent_seconds": WITHIN,
        "expect_within": WITHIN,
        "_source": "revicom",
    }


async def test_repeated_checks_during_one_silence_do_not_raise_it_again(store, clock):
    w = await watcher(store, clock)
    clock.advance(WITHIN)
    assert await w.check() == [SILENT]
    for _ in range(5):
        clock.advance(WITHIN)
        assert await w.check() == []
    assert [e["callback_event"] for e in await alarms(store)] == [SILENT]


async def test_traffic_before_the_deadline_restarts_the_wait(store, clock):
    w = await watcher(store, clock)
    clock.advance(WITHIN / 2)
    w.seen("revicom", clock.now())
    clock.advance(WITHIN / 2)
    assert await w.check() == []
    clock.advance(WITHIN / 2)
    assert await w.check() == [SILENT]
    [event] = await alarms(store)
    assert event["silent_seconds"] == WITHIN
    assert event["last_received_at"] == "2023-11-14T22:13:50Z"  # T0 + 30


async def test_traffic_after_a_silence_raises_one_source_resumed(store, clock):
    w = await watcher(store, clock)
    clock.advance(WITHIN)
    await w.check()
    clock.advance(240)
    w.seen("revicom", clock.now())
    assert await w.check() == [RESUMED]
    assert await w.check() == []
    w.seen("revicom", clock.now() + 1)
    assert await w.check() == []
    silent, resumed = await alarms(store)
    assert silent["callback_event"] == SILENT
    assert resumed["callback_event"] == RESUMED
    assert resumed["last_received_at"] == silent["last_received_at"]  # silent since then
    assert resumed["silent_seconds"] == WITHIN + 240


async def test_a_second_silence_after_resuming_is_raised_again(store, clock):
    w = await watcher(store, clock)
    clock.advance(WITHIN)
    assert await w.check() == [SILENT]
    w.seen("revicom", clock.now())
    assert await w.check() == [RESUMED]
    clock.advance(WITHIN)
    assert await w.check() == [SILENT]
    assert [e["callback_event"] for e in await alarms(store)] == [SILENT, RESUMED, SILENT]


async def test_two_watchers_on_one_store_raise_each_event_exactly_once(store, clock):
    first = await watcher(store, clock)
    second = await watcher(store, clock)  # another process, started at the same time
    clock.advance(WITHIN)
    raised = await asyncio.gather(first.check(), second.check())
    assert sorted(e for r in raised for e in r) == [SILENT]
    assert await first.check() == [] and await second.check() == []

    # Traffic reaches only the second process; the first learns of it through the store.
    second.seen("revicom", clock.now())
    raised = await asyncio.gather(second.check(), first.check())
    assert sorted(e for r in raised for e in r) == [RESUMED]
    assert await first.check() == [] and await second.check() == []
    assert [e["callback_event"] for e in await alarms(store)] == [SILENT, RESUMED]


async def test_both_watchers_seeing_traffic_at_once_still_resume_only_once(store, clock):
    first = await watcher(store, clock)
    second = await watcher(store, clock)
    clock.advance(WITHIN)
    await first.check()
    first.seen("revicom", clock.now())
    second.seen("revicom", clock.now())
    await asyncio.gather(first.check(), second.check())
    assert [e["callback_event"] for e in await alarms(store)] == [SILENT, RESUMED]


async def test_only_sources_with_expect_within_are_watched(store, clock):
    w = await watcher(store, clock, revicom=WITHIN, other=10 * WITHIN)
    w.seen("unwatched", clock.now())
    clock.advance(WITHIN)
    assert await w.check() == [SILENT]
    assert [e["_source"] for e in await alarms(store)] == ["revicom"]
    clock.advance(9 * WITHIN)
    assert await w.check() == [SILENT]
    assert [e["_source"] for e in await alarms(store)] == ["revicom", "other"]


async def test_the_background_loop_raises_the_alarm_by_itself(store, clock):
    w = SilenceWatcher(store, clock, {"revicom": WITHIN})
    assert w.interval() == WITHIN / 4
    await w.start()  # notes T0 as the last traffic; the loop's first check has not run yet
    clock.advance(WITHIN)
    try:
        for _ in range(500):  # polling for the outcome (bounded), not timing
            if await alarms(store):
                break
            await asyncio.sleep(0.01)
    finally:
        await w.stop()
    assert [e["callback_event"] for e in await alarms(store)] == [SILENT]


E2E_CONFIG = """
server: {host: 127.0.0.1}
store: sqlite:///var/gateway.db
sources:
  revicom:
    path: /callbacks/revicom
    expect_within: 1s
destinations:
  alarms: {type: file, path: var/alarms.jsonl}
routes:
  - name: silence
    match: {callback_event: [source_silent, source_resumed]}
    to: [alarms]
"""


@pytest.mark.slow
def test_a_silent_source_event_reaches_a_file_destination(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gw = gateway_factory(E2E_CONFIG)
    out = gw.workdir / "var" / "alarms.jsonl"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (out.exists() and out.read_text().strip()):
        time.sleep(0.1)  # waiting for the outcome, bounded by the deadline
    assert out.exists(), f"no alarm delivered:\n{gw.logs()}"
    first = json.loads(out.read_text().splitlines()[0])
    assert first["source"] == "revicom"
    assert first["route"] == "silence"
    assert first["event"]["callback_event"] == "source_silent"
    assert first["event"]["expect_within"] == 1.0
    assert first["event"]["silent_seconds"] >= 1.0
    assert "source=revicom source_silent" in gw.logs()
