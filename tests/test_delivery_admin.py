"""Admin operations shared by the CLI and the admin API: list, show, replay, pause."""

from __future__ import annotations

import pytest
from delivery_harness import EngineHarness
from receiver import Receiver, Reply

from gateway.delivery import admin


@pytest.fixture
async def rx():
    async with Receiver() as receiver:
        yield receiver


def config(rx: Receiver) -> str:
    return f"""
destinations:
  crm: {{type: webhook, url: "{rx.url}/crm"}}
  ops: {{type: webhook, url: "{rx.url}/ops"}}
"""


async def test_list_show_and_replay_a_dead_delivery_keep_its_id_and_history(tmp_path, rx):
    rx.script(Reply(400, b"no"), path="/crm")
    async with EngineHarness(tmp_path, config(rx)) as h:
        [dead] = await h.add("crm")
        [ok] = await h.add("ops")
        await h.engine.start()
        await h.until(dead, lambda r: r.state == "dead")
        await h.until(ok, lambda r: r.state == "delivered")

        listed = await admin.list_deliveries(h.store, state="dead")
        assert [d.id for d in listed] == [dead]
        assert listed[0].as_dict()["last_error"] == "HTTP 400: no"
        assert [d.id for d in await admin.list_deliveries(h.store, destination="ops")] == [ok]
        uuid = listed[0].message_uuid
        assert len(await admin.list_deliveries(h.store, message_uuid=uuid)) == 2
        assert await admin.list_deliveries(h.store, since=h.clock.now() + 1) == []

        record, attempts = await admin.show_delivery(h.store, dead)
        detail = admin.delivery_detail(record, attempts)
        assert detail["attempt_history"][0]["status"] == 400
        assert detail["event"]["message_uuid"] == uuid
        assert await admin.show_delivery(h.store, "msg_nope") is None

        replayed = await admin.replay(h.store, h.clock.now(), state="dead", destination="crm")
        assert replayed == [dead]
        h.engine.wake("crm")
        record, attempts = await h.until(dead, lambda r: r.state == "delivered")
    assert record.id == dead and record.attempts == 1
    assert [a.outcome for a in attempts] == ["dead", "delivered"]
    assert [r.headers["webhook-id"] for r in rx.requests if r.path == "/crm"] == [dead, dead]


async def test_replay_by_id_and_argument_checks(tmp_path, rx):
    rx.script(Reply(400), path="/crm")
    async with EngineHarness(tmp_path, config(rx)) as h:
        [dead] = await h.add("crm")
        await h.engine.start()
        await h.until(dead, lambda r: r.state == "dead")
        assert await admin.replay(h.store, h.clock.now(), ids=[dead]) == [dead]
        h.engine.wake("crm")
        await h.until(dead, lambda r: r.state == "delivered")
        with pytest.raises(ValueError, match="--state"):
            await admin.replay(h.store, h.clock.now())
        with pytest.raises(ValueError, match="in flight"):
            await admin.replay(h.store, h.clock.now(), state="in_flight")
        with pytest.raises(ValueError, match="unknown state"):
            await admin.list_deliveries(h.store, state="gone")


async def test_pause_and_resume_by_mark_reach_a_running_engine(tmp_path, rx):
    async with EngineHarness(tmp_path, config(rx)) as h:
        await admin.pause_destination(h.store, "crm", "maintenance", h.clock.now())
        assert await admin.paused_destinations(h.store, ["crm", "ops"]) == {"crm": "maintenance"}
        await h.engine.start()
        [did] = await h.add("crm")
        await h.settle()
        assert rx.requests == []
        # resumed by another process (the CLI): the engine notices at its next pause poll
        await admin.resume_destination(h.store, "crm", h.clock.now())
        await h.advance(5)
        await h.until(did, lambda r: r.state == "delivered")
