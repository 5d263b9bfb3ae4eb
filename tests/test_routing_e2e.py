"""Routing end to end: real HTTP into a gateway subprocess, a real loopback receiver out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from receiver import Receiver

from gateway.store import store_from_url

pytestmark = pytest.mark.slow

CONFIG = """
sources:
  revicom: {path: /callbacks/revicom}
store: sqlite:///gw.db
enrichers:
  error_text: {codes: {6969: "Blocked by operator"}}
destinations:
  ops: {type: webhook, url: "RX/ops", payload: envelope}
  crm: {type: webhook, url: "RX/crm"}
  archive: {type: webhook, url: "RX/archive", payload: envelope}
routes:
  - name: failures
    when: event.status in ["undelivered", "unsent"]
    enrich: [status_text, error_text]
    to: [ops, crm]
  - name: inbound
    match: {callback_event: inbound_sent, item.contentType: text}
    to: crm
    stop: true
  - name: statuses
    match: {callback_event: [delivered, sent]}
    to: archive
"""


def status(uuid: str, kind: str, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_uuid": uuid,
        "channel_type": "SMS",
        "callback_event": "sent" if kind == "sent" else "delivered",
        "status": kind,
        "status_time": f"2020-10-16T{at}Z",
        **extra,
    }


async def post(gw: Any, body: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(gw.url("/callbacks/revicom"), json=body)
    assert resp.status_code == 200, resp.text


async def events(workdir: Path, state: str) -> list[Any]:
    store = store_from_url("sqlite:///gw.db", workdir)
    await store.open()
    try:
        return await store.list_events(state)
    finally:
        await store.close()


async def eventually(check: Any, within: float = 15.0) -> Any:
    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


def by_path(rx: Receiver) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in rx.requests:
        out.setdefault(r.path, []).append(json.loads(r.body))
    return out


async def test_an_event_fans_out_to_every_matching_route_and_unmatched_ones_are_kept(
    gateway_factory, tmp_path, sample
):
    async with Receiver() as rx:
        gw = gateway_factory(CONFIG.replace("RX", rx.url))
        (undelivered,) = sample("delivered-undelivered")
        (inbound,) = sample("inbound")
        click = sample("click")[0]
        await post(gw, [undelivered, inbound, click])
        await rx.wait_for(4, timeout=15)
        got = by_path(rx)
        # failures -> ops + crm, statuses -> archive; inbound -> crm and stops.
        assert sorted((p, len(v)) for p, v in got.items()) == [
            ("/archive", 1),
            ("/crm", 2),
            ("/ops", 1),
        ]
        (ops,) = got["/ops"]
        assert ops["route"] == "failures"
        assert ops["event"] == undelivered
        assert ops["enrichment"] == {
            "status_text": "Not delivered within the message lifetime",
            "error_text": "Blocked by operator",
        }
        assert sorted(got["/crm"], key=json.dumps) == sorted(
            [[undelivered], [inbound]], key=json.dumps
        )
        assert got["/archive"][0]["route"] == "statuses"
        (unmatched,) = await eventually(lambda: events(tmp_path, "unmatched"))
        assert json.loads(unmatched.raw) == click
        assert unmatched.reason == "none of 3 route(s) matched"


async def test_a_stale_status_is_not_forwarded_and_the_reason_is_recorded(
    gateway_factory, tmp_path
):
    async with Receiver() as rx:
        gw = gateway_factory(CONFIG.replace("RX", rx.url))
        await post(gw, [status("m-1", "delivered", "18:51:13")])
        await rx.wait_for(1, timeout=15)
        await post(gw, [status("m-1", "sent", "18:50:02")])  # a late resend
        (filtered,) = await eventually(lambda: events(tmp_path, "filtered"))
        assert json.loads(filtered.raw)["status"] == "sent"
        assert filtered.reason.startswith(
            "route 'statuses': filter 'ordering': out of order: delivered at"
            " 2020-10-16T18:51:13Z was already forwarded for message m-1"
        )
        await post(gw, [status("m-2", "sent", "18:50:02")])  # another message: forwarded
        await rx.wait_for(2, timeout=15)
        assert [b["event"]["message_uuid"] for b in by_path(rx)["/archive"]] == ["m-1", "m-2"]


FLAKY = """
from pathlib import Path
from gateway import hookimpl

@hookimpl
def enrich_event(event, meta):
    marker = Path("flaky-failed-once")
    if not marker.exists():
        marker.write_text("x")
        raise ConnectionError("directory service unreachable")
    return {"owner": "team-a"}
"""


async def test_a_raising_plugin_holds_the_event_with_its_name_until_it_recovers(
    gateway_factory, tmp_path
):
    (tmp_path / "flaky_plugin.py").write_text(FLAKY)
    config = "plugins: [flaky_plugin]\n" + CONFIG
    async with Receiver() as rx:
        gw = gateway_factory(config.replace("RX", rx.url))
        await post(gw, [status("m-9", "delivered", "18:51:13")])
        (req,) = await rx.wait_for(1, timeout=20)
        body = json.loads(req.body)
        assert body["enrichment"] == {"owner": "team-a"}
        assert (tmp_path / "flaky-failed-once").exists()
        assert "plugin 'flaky_plugin' raised ConnectionError: directory service unreachable" in (
            gw.logs()
        )
