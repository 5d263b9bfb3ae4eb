"""The retention schedule and the `purge` verb (gateway/ops/housekeeping.py, gateway/cli/purge.py).

What a pass removes is the store contract's business (test_store_contract.py); here: one pass
per interval across processes, the free-space warning, the silence alarm's state surviving
passes, and the CLI verb's output.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from manual_clock import ManualClock

from gateway.config.models import RetentionConfig
from gateway.delivery import admin
from gateway.ops.housekeeping import Housekeeper, purge_once
from gateway.ops.silence import SilenceWatcher
from gateway.store import IncomingEvent
from gateway.store.base import PURGE_KINDS, Footprint
from gateway.store.marks import Marks
from gateway.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
DAY = 86400.0
SHORT = RetentionConfig(events="1s", delivered="1s", dead="1s", quarantined="1s", interval="60s")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "gw.db")
    await s.open()
    yield s
    await s.close()


async def test_two_processes_on_one_store_run_one_pass_per_interval(store: SQLiteStore) -> None:
    clock = ManualClock(T0)
    first, second = Housekeeper(store, SHORT, clock), Housekeeper(store, SHORT, clock)
    assert await first.run_due() is not None
    assert await second.run_due() is None  # the same interval: already done
    assert await first.run_due() is None
    clock.advance(60)
    assert await second.run_due() is not None
    assert await first.run_due() is None


async def test_a_pass_removes_what_the_retention_no_longer_keeps(store: SQLiteStore) -> None:
    clock = ManualClock(T0)
    await store.ingest("s", [IncomingEvent("{}", "k", problems=("bad",))], T0)
    keeper = Housekeeper(store, SHORT, clock)
    clock.advance(120)
    removed = await keeper.run_due()
    assert removed is not None and removed["quarantined"] == 1
    assert keeper.last == removed
    assert await store.list_events("quarantined") == []


async def test_low_free_space_is_a_warning_after_the_pass(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def nearly_full() -> Footprint:
        return Footprint(bytes=10 * 2**20, free_bytes=100 * 2**20)

    monkeypatch.setattr(store, "footprint", nearly_full)
    caplog.set_level(logging.WARNING, "gateway.ops.housekeeping")
    roomy = SHORT.model_copy(update={"min_free_space": 50 * 2**20})
    await Housekeeper(store, roomy, ManualClock(T0)).run_due()
    assert not caplog.records
    tight = SHORT.model_copy(update={"min_free_space": 2**30})
    await Housekeeper(store, tight, ManualClock(T0 + 60)).run_due()
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert "100 MiB free" in record.getMessage()
    assert "retention.min_free_space" in record.getMessage()


async def test_the_silence_alarm_keeps_its_state_through_any_number_of_passes(
    store: SQLiteStore,
) -> None:
    clock = ManualClock(T0)
    watcher = SilenceWatcher(store, clock, {"revicom": 60.0})
    await watcher.start()
    await watcher.stop()
    clock.advance(61)
    assert await watcher.check() == ["source_silent"]
    for _ in range(3):
        clock.advance(10 * DAY)
        await purge_once(store, SHORT, clock.now())
    assert await watcher.check() == []  # still known silent: not raised a second time
    watcher.seen("revicom", clock.now())
    assert await watcher.check() == ["source_resumed"]


def test_purge_prints_a_count_per_kind_and_json_prints_one_object(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"store: sqlite:///{db}\n"
        "retention: {events: 1s, delivered: 1s, dead: 1s, quarantined: 1s}\n"
    )

    def purge(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "purge", "-c", str(config), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )

    text = purge()
    assert text.returncode == 0, text.stderr
    assert [line.split()[0] for line in text.stdout.splitlines()] == list(PURGE_KINDS)
    assert all(line.split()[1] == "0" for line in text.stdout.splitlines())
    as_json = purge("--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == dict.fromkeys(PURGE_KINDS, 0)


def test_retention_keys_accept_any_duration_down_to_one_second() -> None:
    assert SHORT.events == 1.0 and SHORT.interval == 60.0
    with pytest.raises(ValueError, match="at least 1s"):
        RetentionConfig(events="500ms")
    with pytest.raises(ValueError, match="25h"):
        RetentionConfig(dedupe="24h")


async def test_a_plugins_marks_cannot_read_or_change_a_pause(store: SQLiteStore) -> None:
    await admin.pause_destination(store, "crm", "maintenance", T0)
    marks = Marks(store, ManualClock(T0))  # what filters and enrichers get as meta["marks"]
    assert await marks.get("paused:crm") is None
    await marks.set("paused:crm", None)
    await marks.advance("paused:crm", "9", "{}")
    assert await admin.paused_reason(store, "crm") == "maintenance"
