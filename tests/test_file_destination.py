"""The file destination: one envelope per line, appended, parent created, through the engine."""

from __future__ import annotations

import json
import os

import pytest
from delivery_harness import SAMPLE, EngineHarness
from gateway_plugins.file import FileDestination, Options
from manual_clock import ManualClock

from gateway.destination.base import Services
from gateway.store import DeliveryRecord

PRETTY = '{\n  "message_uuid": "u-2",\n  "callback_event": "sent",\n  "note": "a\\nb"\n}'


def delivery(i: int = 1, raw: str = SAMPLE) -> DeliveryRecord:
    return DeliveryRecord(
        id=f"msg_{i}",
        event_id=f"evt_{i}",
        source="revicom",
        route="archive",
        destination="archive",
        state="in_flight",
        attempts=0,
        next_attempt_at=0.0,
        created_at=0.0,
        updated_at=0.0,
        raw=raw,
        received_at=1_700_000_000.5,
        enrichment={"k": i},
    )


def make(path, **options) -> FileDestination:
    services = Services(None, ManualClock(), None, set())  # type: ignore[arg-type]
    return FileDestination("archive", Options(path=str(path), **options), services)


async def test_each_delivery_appends_one_envelope_line(tmp_path):
    path = tmp_path / "out" / "nested" / "events.jsonl"
    dest = make(path)
    for i in (1, 2):
        out = await dest.deliver(delivery(i))
        assert out.kind == "delivered"
    await dest.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "id": f"msg_{i}",
            "event_id": f"evt_{i}",
            "source": "revicom",
            "route": "archive",
            "received_at": "2023-11-14T22:13:20.500Z",
            "event": json.loads(SAMPLE),
            "enrichment": {"k": i},
        }
        for i in (1, 2)
    ]


async def test_an_element_with_line_breaks_still_takes_one_line(tmp_path):
    dest = make(tmp_path / "e.jsonl", fsync=True)
    await dest.deliver(delivery(raw=PRETTY))
    await dest.close()
    [line] = (tmp_path / "e.jsonl").read_text().splitlines()
    assert json.loads(line)["event"] == json.loads(PRETTY)


async def test_existing_content_is_kept(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"old": true}\n')
    dest = make(path)
    await dest.deliver(delivery())
    await dest.close()
    assert len(path.read_text().splitlines()) == 2


async def test_relative_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dest = make("var/events.jsonl")
    await dest.deliver(delivery())
    await dest.close()
    assert (tmp_path / "var" / "events.jsonl").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
async def test_an_unwritable_path_is_retried_with_the_reason(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    out = await make(locked / "e.jsonl").deliver(delivery())
    assert out.kind == "retry" and "cannot write" in out.error


async def test_a_directory_in_the_way_is_retried_with_the_reason(tmp_path):
    (tmp_path / "e.jsonl").mkdir()
    out = await make(tmp_path / "e.jsonl").deliver(delivery())
    assert out.kind == "retry" and "cannot write" in out.error


async def test_the_engine_delivers_to_a_file(tmp_path):
    path = tmp_path / "archive.jsonl"
    config = f"destinations:\n  archive: {{type: file, path: '{path}'}}\n"
    async with EngineHarness(tmp_path, config, clock=ManualClock()) as h:
        ids = await h.add("archive", 20, route="archive")
        await h.engine.start()
        for did in ids:
            await h.until(did, lambda r: r.state == "delivered")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(ids)
