"""The slack destination against a loopback server that answers like Slack documents."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from gateway_plugins.slack import Options, Slack
from gateway_plugins.slack_blocks import MAX_BLOCKS, clip
from manual_clock import ManualClock
from pydantic import ValidationError
from slack_server import WEBHOOK_PATH, SlackServer, api_error, webhook_error

from gateway.config import load_config_text
from gateway.destination import Marks, Services
from gateway.store import DeliveryRecord
from gateway.store.sqlite import SQLiteStore

TOKEN = "xoxb-test-token"
#: One TLS context for every test's client: building one costs a tenth of a second.
TLS = ssl.create_default_context()
UNDELIVERED = {
    "message_uuid": "063464ec-a34f-4558-90c5-984395000003",
    "channel_type": "SMS",
    "cascade_message_uuid": "063464ec-a34f-4558-90c5-984395000002",
    "cascade_step": 2,
    "callback_event": "delivered",
    "status": "undelivered",
    "status_time": "2020-10-16T18:51:13Z",
    "error_code": 6969,
}
INBOUND = {
    "message_uuid": "0b2f6a10-a34f-4558-90c5-984395000009",
    "callback_event": "inbound_sent",
    "channel_type": "WHATSAPP",
    "status": "inbound_sent",
    "status_time": "2020-10-16T18:51:13Z",
    "item": {"contentType": "text", "text": "Hello, is my order on its way? <!channel> & co"},
}

# The messages shipped for config.example.yaml (kept here so they are proven to render and to
# pass Slack's checks).
EXAMPLES = yaml.safe_load(r"""
failure:
  text: ":rotating_light: {{ event.channel_type }} message {{ event.status }}: {{ event.message_uuid }}"
  blocks:
    - type: header
      text: {type: plain_text, emoji: true, text: ":rotating_light: {{ event.channel_type }} message {{ event.status }}"}
    - type: section
      fields:
        - {type: mrkdwn, text: "*Message*\n`{{ event.message_uuid }}`"}
        - {type: mrkdwn, text: "*Status*\n{{ event.status_text or event.status }} at {{ event.status_time }}"}
        - {type: mrkdwn, text: "{% if event.error_code %}*Error {{ event.error_code }}*\n{{ event.error_text or 'no description configured' }}{% endif %}"}
        - {type: mrkdwn, text: "{% if event.cascade_message_uuid %}*Cascade*\n`{{ event.cascade_message_uuid }}` step {{ event.cascade_step }}{% endif %}"}
    - type: context
      elements:
        - {type: mrkdwn, text: "source *{{ meta.source }}* · route *{{ meta.route }}* · delivery `{{ meta.id }}`"}
inbound:
  text: "New {{ event.channel_type }} message: {{ event.item.text }}"
  blocks:
    - type: section
      text: {type: mrkdwn, text: ":speech_balloon: *New inbound {{ event.channel_type }} message*"}
    - type: section
      text: {type: mrkdwn, text: "{{ event.item.text if event.item.text else '(' ~ event.item.contentType ~ ' content: see the gateway)' }}"}
    - type: context
      elements:
        - {type: mrkdwn, text: "message `{{ event.message_uuid }}` · {{ event.status_time }} · delivery `{{ meta.id }}`"}
""")  # noqa: E501


def record(
    fields: dict[str, Any],
    n: int = 1,
    enrichment: dict[str, Any] | None = None,
    message_uuid: str | None = "default",
) -> DeliveryRecord:
    return DeliveryRecord(
        id=f"dlv_{n:04d}",
        event_id=f"evt_{n:04d}",
        source="revicom",
        route="failures",
        destination="ops-slack",
        state="in_flight",
        attempts=0,
        next_attempt_at=0.0,
        created_at=0.0,
        updated_at=0.0,
        raw=json.dumps(fields),
        enrichment=enrichment or {},
        message_uuid=fields.get("message_uuid") if message_uuid == "default" else message_uuid,
        received_at=1_700_000_000.25,
    )


@pytest.fixture
async def slack() -> AsyncIterator[SlackServer]:
    async with SlackServer(token=TOKEN) as server:
        yield server


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    store = SQLiteStore(tmp_path / "gw.db")
    await store.open()
    http = httpx.AsyncClient(verify=TLS, follow_redirects=False, trust_env=False)
    clock = ManualClock()
    yield Services(http, clock, Marks(store, clock), {TOKEN})
    await http.aclose()
    await store.close()


def webhook(slack: SlackServer, services: Services, **opts: Any) -> Slack:
    return Slack("ops-slack", Options(webhook_url=slack.webhook_url, **opts), services)


def api(slack: SlackServer, services: Services, **opts: Any) -> Slack:
    opts = {"token": TOKEN, "channel": "#ops", "api_url": slack.api_url, **opts}
    return Slack("ops-slack", Options(**opts), services)


# -- incoming webhooks -------------------------------------------------------------------------


async def test_webhook_posts_the_rendered_text(slack: SlackServer, services: Services) -> None:
    dest = webhook(slack, services, text="{{ event.message_uuid }} {{ event.status }}")
    outcome = await dest.deliver(record(UNDELIVERED))
    assert outcome.kind == "delivered"
    [req] = slack.requests
    assert req.json == {"text": "063464ec-a34f-4558-90c5-984395000003 undelivered"}
    assert req.headers["Content-Type"].startswith("application/json")
    assert "Authorization" not in req.headers


async def test_default_text_names_status_message_and_error(
    slack: SlackServer, services: Services
) -> None:
    await webhook(slack, services).deliver(
        record(UNDELIVERED, enrichment={"error_text": "Blocked by operator"})
    )
    assert slack.requests[0].json["text"] == (
        "*undelivered* SMS message `063464ec-a34f-4558-90c5-984395000003`"
        " (error 6969: Blocked by operator)"
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_payload"),
        (403, "action_prohibited"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
        (404, "no_service"),
        (400, "no_text"),
        (403, "invalid_token"),
        (400, "too_many_attachments"),
    ],
)
async def test_webhook_error_strings_are_permanent_and_name_the_error(
    slack: SlackServer, services: Services, status: int, code: str
) -> None:
    slack.script(webhook_error(status, code))
    outcome = await webhook(slack, services).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.status) == ("permanent", status)
    assert code in (outcome.error or "")
    # 410 Gone (an archived channel) pauses the destination, as for every HTTP destination:
    # every later message would fail the same way until someone acts.
    assert outcome.pause_destination == (status == 410)


async def test_webhook_429_is_throttled_for_retry_after(
    slack: SlackServer, services: Services
) -> None:
    slack.script(webhook_error(429, "rate_limited", retry_after=30))
    outcome = await webhook(slack, services).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.retry_after) == ("throttled", 30.0)


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_webhook_server_errors_are_retried(
    slack: SlackServer, services: Services, status: int
) -> None:
    slack.script(webhook_error(status, "internal_error"))
    outcome = await webhook(slack, services).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.status) == ("retry", status)


async def test_unreachable_webhook_is_retried_without_showing_its_secret_url(
    services: Services,
) -> None:
    url = "http://127.0.0.1:9" + WEBHOOK_PATH  # discard port: nothing listens
    services.secrets.add(url)
    outcome = await Slack("s", Options(webhook_url=url), services).deliver(record(UNDELIVERED))
    assert outcome.kind == "retry"
    assert "XXXXSECRET" not in (outcome.error or "")


# -- chat.postMessage --------------------------------------------------------------------------


async def test_api_sends_bearer_token_channel_text_and_blocks(
    slack: SlackServer, services: Services
) -> None:
    ex = EXAMPLES["inbound"]
    outcome = await api(slack, services, text=ex["text"], blocks=ex["blocks"]).deliver(
        record(INBOUND)
    )
    assert outcome.kind == "delivered"
    [req] = slack.requests
    assert req.path == "/api/chat.postMessage"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    body = req.json
    assert body["channel"] == "#ops"
    assert "thread_ts" not in body
    # What the human sees: the customer's text, escaped so it cannot ping the channel.
    assert body["text"] == (
        "New WHATSAPP message: Hello, is my order on its way? &lt;!channel&gt; &amp; co"
    )
    assert [b["type"] for b in body["blocks"]] == ["section", "section", "context"]
    assert body["blocks"][0]["text"]["text"] == (":speech_balloon: *New inbound WHATSAPP message*")
    assert body["blocks"][1]["text"]["text"] == (
        "Hello, is my order on its way? &lt;!channel&gt; &amp; co"
    )
    assert body["blocks"][2]["elements"][0]["text"] == (
        "message `0b2f6a10-a34f-4558-90c5-984395000009` · 2020-10-16T18:51:13Z"
        " · delivery `dlv_0001`"
    )


async def test_failure_example_drops_fields_that_render_empty(
    slack: SlackServer, services: Services
) -> None:
    ex = EXAMPLES["failure"]
    unsent = {
        "message_uuid": "u-1",
        "channel_type": "VIBER",
        "callback_event": "delivered",
        "status": "unsent",
        "status_time": "2020-10-16T18:40:00Z",
    }
    dest = api(slack, services, text=ex["text"], blocks=ex["blocks"])
    assert (await dest.deliver(record(unsent))).kind == "delivered"
    assert (
        await dest.deliver(record(UNDELIVERED, 2, {"status_text": "Not delivered"}))
    ).kind == "delivered"
    first, second = (r.json for r in slack.requests)
    assert first["blocks"][0]["text"] == {
        "type": "plain_text",
        "emoji": True,
        "text": ":rotating_light: VIBER message unsent",
    }
    assert [f["text"] for f in first["blocks"][1]["fields"]] == [
        "*Message*\n`u-1`",
        "*Status*\nunsent at 2020-10-16T18:40:00Z",
    ]
    assert [f["text"] for f in second["blocks"][1]["fields"]] == [
        "*Message*\n`063464ec-a34f-4558-90c5-984395000003`",
        "*Status*\nNot delivered at 2020-10-16T18:51:13Z",
        "*Error 6969*\nno description configured",
        "*Cascade*\n`063464ec-a34f-4558-90c5-984395000002` step 2",
    ]
    assert second["blocks"][2]["elements"][0]["text"] == (
        "source *revicom* · route *failures* · delivery `dlv_0002`"
    )


async def test_plain_text_objects_are_not_escaped(slack: SlackServer, services: Services) -> None:
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": "{{ event.item.text }}"}}]
    await api(slack, services, blocks=blocks).deliver(record(INBOUND))
    assert slack.requests[0].json["blocks"][0]["text"]["text"] == (
        "Hello, is my order on its way? <!channel> & co"
    )


@pytest.mark.parametrize(
    "code", ["internal_error", "fatal_error", "service_unavailable", "request_timeout"]
)
async def test_api_transient_errors_are_retried(
    slack: SlackServer, services: Services, code: str
) -> None:
    slack.script(api_error(code))
    outcome = await api(slack, services).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.status) == ("retry", 200)
    assert code in (outcome.error or "")


@pytest.mark.parametrize(
    "code",
    [
        "invalid_auth",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "account_inactive",
        "token_revoked",
        "restricted_action",
    ],
)
async def test_api_other_errors_are_permanent(
    slack: SlackServer, services: Services, code: str
) -> None:
    slack.script(api_error(code))
    outcome = await api(slack, services).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.error) == ("permanent", f"Slack chat.postMessage error: {code}")


async def test_api_ratelimited_waits_out_retry_after(
    slack: SlackServer, services: Services
) -> None:
    slack.script(api_error("ratelimited", retry_after=7))
    outcome = await api(slack, services).deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.retry_after, outcome.status) == ("throttled", 7.0, 429)


async def test_invalid_blocks_details_reach_the_error(
    slack: SlackServer, services: Services
) -> None:
    slack.script(
        api_error(
            "invalid_blocks",
            response_metadata={
                "messages": ["[ERROR] must be a valid enum value [json-pointer:/blocks/0/type]"]
            },
        )
    )
    outcome = await api(slack, services).deliver(record(UNDELIVERED))
    assert outcome.kind == "permanent"
    assert "json-pointer:/blocks/0/type" in (outcome.error or "")


async def test_wrong_token_is_permanent_and_never_shown(
    slack: SlackServer, services: Services
) -> None:
    services.secrets.add("xoxb-wrong-token")
    dest = api(slack, services, token="xoxb-wrong-token")
    outcome = await dest.deliver(record(UNDELIVERED))
    assert (outcome.kind, outcome.error) == (
        "permanent",
        "Slack chat.postMessage error: invalid_auth",
    )
    assert slack.requests[0].headers["Authorization"] == "Bearer xoxb-wrong-token"


async def test_a_template_that_breaks_the_sandbox_is_permanent(
    slack: SlackServer, services: Services
) -> None:
    dest = api(slack, services, text="{{ event.__class__.__mro__ }}")
    outcome = await dest.deliver(record(UNDELIVERED))
    assert outcome.kind == "permanent"
    assert slack.requests == []


async def test_a_message_that_renders_empty_is_not_sent(
    slack: SlackServer, services: Services
) -> None:
    outcome = await api(slack, services, text="{{ event.nothing }}").deliver(record(UNDELIVERED))
    assert outcome.kind == "permanent"
    assert "no_text" in (outcome.error or "")
    assert slack.requests == []


# -- sizes -------------------------------------------------------------------------------------


async def test_oversized_text_and_blocks_are_cut_to_what_slack_accepts(
    slack: SlackServer, services: Services
) -> None:
    huge = {**INBOUND, "item": {"contentType": "text", "text": "x" * 50_000}}
    blocks = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "{{ event.item.text }}"},
            "fields": [{"type": "mrkdwn", "text": "f{{ i }}"}] * 12,
        }
    ] * 60
    dest = webhook(slack, services, text="{{ event.item.text }}", blocks=blocks)
    outcome = await dest.deliver(record(huge))
    assert outcome.kind == "delivered", outcome.error
    body = slack.requests[0].json
    assert len(body["text"]) == 40_000 and body["text"].endswith("…")
    assert len(body["blocks"]) == MAX_BLOCKS
    assert len(body["blocks"][0]["text"]["text"]) == 3_000
    assert len(body["blocks"][0]["fields"]) == 10
    assert body["blocks"][-1] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": "… 11 more blocks not shown"}],
    }


def test_clip_never_cuts_a_link_or_an_entity_in_half() -> None:
    assert clip("abc <https://example.com|link>", 12) == "abc …"
    assert clip("fish &amp; chips", 8) == "fish …"
    assert clip("short", 10) == "short"
    assert len(clip("y" * 100, 10)) == 10


# -- threads -----------------------------------------------------------------------------------


async def test_later_events_of_a_message_reply_in_its_thread(
    slack: SlackServer, services: Services
) -> None:
    dest = api(slack, services, thread=True)
    sent = {**UNDELIVERED, "status": "sent", "callback_event": "sent"}
    other = {**UNDELIVERED, "message_uuid": "another"}
    for n, fields in enumerate([sent, UNDELIVERED, other, UNDELIVERED], 1):
        assert (await dest.deliver(record(fields, n))).kind == "delivered"
    bodies = [r.json for r in slack.requests]
    root = next(iter(slack.posted))
    assert "thread_ts" not in bodies[0]
    assert bodies[1]["thread_ts"] == root
    assert "thread_ts" not in bodies[2]
    assert bodies[3]["thread_ts"] == root
    assert services.marks is not None
    mark = await services.marks.get(f"slack-thread:ops-slack:#ops:{UNDELIVERED['message_uuid']}")
    assert mark == ("2", root)


async def test_an_event_waits_while_its_thread_root_is_being_posted(
    slack: SlackServer, services: Services
) -> None:
    key = f"slack-thread:ops-slack:#ops:{UNDELIVERED['message_uuid']}"
    now = services.clock.now()
    assert services.marks is not None
    await services.marks.set(key, f"dlv_other {now!r}", rank="1")
    dest = api(slack, services, thread=True)
    outcome = await dest.deliver(record(UNDELIVERED, 2))
    assert outcome.kind == "throttled" and outcome.status is None
    assert slack.requests == []
    services.clock.advance(301)  # type: ignore[attr-defined]  # the root's poster died
    assert (await dest.deliver(record(UNDELIVERED, 2))).kind == "delivered"
    assert "thread_ts" not in slack.requests[0].json
    assert (await services.marks.get(key))[0] == "2"  # type: ignore[index]


async def test_a_failed_root_lets_the_next_event_start_the_thread(
    slack: SlackServer, services: Services
) -> None:
    dest = api(slack, services, thread=True)
    slack.script(api_error("internal_error"))
    assert (await dest.deliver(record(UNDELIVERED, 1))).kind == "retry"
    assert (await dest.deliver(record(UNDELIVERED, 2))).kind == "delivered"
    assert "thread_ts" not in slack.requests[1].json


async def test_a_deleted_thread_root_is_replaced(slack: SlackServer, services: Services) -> None:
    dest = api(slack, services, thread=True)
    await dest.deliver(record(UNDELIVERED, 1))
    slack.posted.clear()  # someone deleted the root message
    outcome = await dest.deliver(record(UNDELIVERED, 2))
    assert outcome.kind == "retry" and "thread_not_found" in (outcome.error or "")
    assert (await dest.deliver(record(UNDELIVERED, 2))).kind == "delivered"
    assert "thread_ts" not in slack.requests[-1].json


async def test_events_without_message_uuid_are_posted_unthreaded(
    slack: SlackServer, services: Services
) -> None:
    dest = api(slack, services, thread=True)
    assert (await dest.deliver(record(UNDELIVERED, message_uuid=None))).kind == "delivered"
    assert "thread_ts" not in slack.requests[0].json


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "says"),
    [
        ({}, "needs 'webhook_url'"),
        ({"token": "x"}, "needs 'webhook_url'"),
        ({"webhook_url": "https://hooks.slack.com/x", "token": "t", "channel": "#c"}, "not both"),
        ({"webhook_url": "https://hooks.slack.com/x", "thread": True}, "'thread: true' needs"),
        ({"webhook_url": "hooks.slack.com/x"}, "http:// or https://"),
        ({"webhook_url": "https://h/x", "text": "{{ oops"}, "template syntax error"),
        ({"webhook_url": "https://h/x", "blocks": [{"text": "x"}]}, "needs a 'type'"),
        (
            {
                "webhook_url": "https://h/x",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "{% if %}"}}],
            },
            "blocks[0].text.text",
        ),
        ({"webhook_url": "https://h/x", "colour": "red"}, "Extra inputs"),
    ],
)
def test_options_are_checked(opts: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=r"(?s).*" + re.escape(says)):
        Options(**opts)


def test_config_check_accepts_a_slack_destination_and_hides_its_token() -> None:
    text = """
destinations:
  ops-slack: {type: slack, token: xoxb-abc-123, channel: "#ops", thread: true}
routes:
  - {to: [ops-slack]}
"""
    loaded = load_config_text(text, env={})
    opts = loaded.destination_options["ops-slack"]
    assert isinstance(opts, Options) and opts.thread
    assert "xoxb-abc-123" in loaded.secrets


def test_slack_asks_the_engine_for_one_message_per_second() -> None:
    assert Slack.default_rate_limit == "1/s"
