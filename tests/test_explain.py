"""`explain`: a readable dry run of the chain, with the payload each destination would get."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from gateway import hookimpl
from gateway.config import load_config_text
from gateway.routing.explain import explain

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONFIG = """
sources:
  revicom: {path: /callbacks/revicom}
destinations:
  crm: {type: webhook, url: "https://crm.example.com/hooks", secret: "SECRET"}
  crm-envelope: {type: webhook, url: "https://crm.example.com/env", payload: envelope}
  crm-template:
    type: webhook
    url: "https://crm.example.com/t"
    payload: template
    body: '{"id": {{ event.message_uuid | tojson }}, "why": {{ event.error_text | tojson }}}'
  archive: {type: file, path: var/events.jsonl}
enrichers:
  error_text: {codes: {6969: "Blocked by operator"}}
routes:
  - name: failures
    when: event.status in ["undelivered", "unsent"]
    enrich: [status_text, error_text]
    to: [crm, crm-envelope, crm-template]
  - name: inbound
    match: {callback_event: inbound_sent}
    to: crm
    stop: true
  - name: archive
    to: archive
""".replace("SECRET", SECRET)


class Clock:
    def now(self) -> float:
        return 1602874300.0

    async def sleep(self, seconds: float) -> None:
        pass


def elements(*events: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    return [(e, json.dumps(e)) for e in events]


async def run(events: list[tuple[dict[str, Any], str]], config: str = CONFIG, **kw: Any) -> str:
    loaded = load_config_text(textwrap.dedent(config), env={}, **kw)
    return await explain(loaded, events, "revicom", clock=Clock())


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


async def test_explain_shows_routes_enrichments_and_exact_payloads(sample, tmp_path):
    (element,) = sample("delivered-undelivered")
    raw = json.dumps(element)
    out = await run([(element, raw)])
    assert "=== element 1 of 1: callback_event=delivered status=undelivered" in out
    assert '[matched] failures: when \'event.status in ["undelivered", "unsent"]\'' in out
    assert (
        'enrich status_text: added {"status_text": "Not delivered within the message lifetime"}'
    ) in out
    assert 'enrich error_text: added {"error_text": "Blocked by operator"}' in out
    assert "[skipped] inbound: callback_event is 'delivered', wanted 'inbound_sent'" in out
    assert "[matched] archive: no conditions: matches every event" in out
    assert "result: routed to 4 destination(s)" in out

    payloads = _payloads(out)
    # payload: original is the provider's array holding this one element.
    assert payloads["crm (webhook, route failures, payload: original)"] == [element]
    envelope = payloads["crm-envelope (webhook, route failures, payload: envelope)"]
    assert envelope["event"] == element
    assert envelope["route"] == "failures"
    assert envelope["source"] == "revicom"
    assert envelope["received_at"] == "2020-10-16T18:51:40.000Z"
    assert envelope["enrichment"] == {
        "status_text": "Not delivered within the message lifetime",
        "error_text": "Blocked by operator",
    }
    assert set(envelope) == {
        "id",
        "event_id",
        "source",
        "route",
        "received_at",
        "event",
        "enrichment",
    }
    assert payloads["crm-template (webhook, route failures, payload: template)"] == {
        "id": element["message_uuid"],
        "why": "Blocked by operator",
    }
    assert payloads["archive (file, route archive, envelope)"]["enrichment"] == {}
    # Nothing was written or sent.
    assert list(tmp_path.iterdir()) == []


def _payloads(out: str) -> dict[str, Any]:
    """{label: parsed JSON} for every 'payload for ...:' block."""
    found, label, lines = {}, None, []
    for line in [*out.splitlines(), ""]:
        if label is not None and line.startswith("  "):
            lines.append(line)
            continue
        if label is not None:
            found[label] = json.loads("\n".join(lines))
            label, lines = None, []
        if line.startswith("payload for "):
            label = line.removeprefix("payload for ").removesuffix(":")
    return found


async def test_explain_shows_stop_and_routes_not_evaluated(sample):
    out = await run(elements(*sample("inbound")))
    assert "[matched] inbound: match callback_event: 'inbound_sent'" in out
    assert "stop: true: later routes are not evaluated" in out
    assert "[not evaluated] archive: an earlier route has stop: true" in out


async def test_explain_of_a_batch_shows_what_ordering_would_suppress():
    delivered = {
        "message_uuid": "m-1",
        "channel_type": "SMS",
        "callback_event": "delivered",
        "status": "delivered",
        "status_time": "2020-10-16T18:51:13Z",
    }
    sent = {
        **delivered,
        "callback_event": "sent",
        "status": "sent",
        "status_time": "2020-10-16T18:50:02Z",
    }
    out = await run(elements(delivered, sent))
    second = out.split("=== element 2 of 2")[1]
    assert (
        "filter ordering: DROPPED: out of order: delivered at 2020-10-16T18:51:13Z was"
        " already forwarded for message m-1"
    ) in second
    assert "result: FILTERED: route 'archive': filter 'ordering'" in second
    assert "payload for" not in second


async def test_explain_says_when_nothing_matches():
    out = await run(
        elements(
            {
                "message_uuid": "m",
                "channel_type": "SMS",
                "callback_event": "click",
                "short_url": "u",
                "click_time": "2020-10-16T18:51:13Z",
            }
        ),
        config="destinations: {a: {type: file, path: a.jsonl}}\n"
        "routes: [{match: {status: sent}, to: a}]",
    )
    assert "[skipped] route-0: status is missing, wanted 'sent'" in out
    assert "result: UNMATCHED: none of 1 route(s) matched" in out


async def test_explain_reports_elements_that_would_be_quarantined():
    out = await run(elements({"message_uuid": "m", "callback_event": "sent"}))
    assert (
        "format: would be QUARANTINED (not routed): channel_type: required field is missing"
    ) in out


async def test_explain_shows_hooks_and_a_plugin_that_raises():
    class Hooks:
        __name__ = "company"

        @hookimpl
        def filter_event(self, event, meta):
            return None

        @hookimpl
        async def enrich_event(self, event, meta):
            if event.get("status") == "sent":
                raise TimeoutError("directory lookup timed out")
            return {"team": "ops"}

    ok = {
        "message_uuid": "m-1",
        "channel_type": "SMS",
        "callback_event": "delivered",
        "status": "delivered",
        "status_time": "2020-10-16T18:51:13Z",
    }
    bad = {**ok, "message_uuid": "m-2", "callback_event": "sent", "status": "sent"}
    out = await run(elements(ok, bad), extra_plugins=[Hooks()])
    assert "plugin hooks:\n  filter_event company: abstained\n" in out
    assert '  enrich_event company: added {"team": "ops"}' in out
    assert (
        "HELD: plugin 'company' raised TimeoutError: directory lookup timed out\n"
        "  (the router would keep the event and try it again later)"
    ) in out


async def test_explain_never_prints_secrets():
    config = CONFIG.replace("https://crm.example.com/hooks", f"https://crm.example.com/{SECRET}")
    out = await run(
        elements(
            {
                "message_uuid": SECRET,
                "channel_type": "SMS",
                "callback_event": "inbound_sent",
                "status": "inbound_sent",
                "status_time": "2020-10-16T18:51:13Z",
            }
        ),
        config=config,
    )
    assert SECRET not in out
    assert "***" in out


async def test_explain_body_splits_a_request_body_and_picks_the_first_source(sample):
    from gateway.routing.explain import explain_body
    from gateway.samples import load

    loaded = load_config_text(textwrap.dedent(CONFIG), env={})
    out = await explain_body(loaded, load("batch-mixed"), clock=Clock())
    assert out.startswith("source 'revicom': 4 element(s).")
    assert "=== element 4 of 4: callback_event=read status=read" in out
    # The exact element text goes into payload: original.
    single = (
        b'{"message_uuid": "u", "channel_type": "SMS", "callback_event": "inbound_sent",'
        b' "status": "inbound_sent", "status_time": "2020-10-16T18:51:13Z", "n": 1.50}'
    )
    out = await explain_body(loaded, single, "revicom", clock=Clock())
    assert '"n": 1.50' in out  # exactly as received, not re-serialised


async def test_explain_body_refuses_bad_input_with_one_line():
    from gateway.errors import UsageError
    from gateway.routing.explain import explain_body

    loaded = load_config_text(textwrap.dedent(CONFIG), env={})
    with pytest.raises(UsageError, match="cannot explain this body: body is empty"):
        await explain_body(loaded, b"  ")
    with pytest.raises(UsageError, match=r"no source named 'nope' \(configured: revicom\)"):
        await explain_body(loaded, b"[]", "nope")


async def test_explain_shows_slack_and_email_payloads_as_their_plugins_render_them(sample):
    config = """
        destinations:
          ops-slack:
            type: slack
            webhook_url: "https://hooks.slack.com/services/T0/B0/XXXXSECRET"
            text: "{{ event.message_uuid }} {{ event.status }}: {{ event.status_text }}"
          support:
            type: email
            host: smtp.example.com
            from: gw@example.com
            to: [support@example.com]
            subject: "{{ event.status }}"
            body: "{{ event.status_text }}"
        routes:
          - {name: failures, enrich: [status_text], to: [ops-slack, support]}
    """
    (unsent,) = sample("unsent")
    out = await run(elements(unsent), config=config)
    slack = out.split("payload for ops-slack (slack, route failures):\n")[1]
    assert json.loads(slack.split("payload for")[0]) == {
        "text": f"{unsent['message_uuid']} unsent: Could not be sent"
    }
    email = out.split("payload for support (email, route failures):\n")[1]
    assert "  Subject: unsent\n" in email and "  To: support@example.com\n" in email
    assert email.rstrip().endswith("Could not be sent")
    assert "XXXXSECRET" not in out
