"""The webhook destination: payloads, Standard Webhooks signing, classification, options.

Classification is unit-tested with httpx.MockTransport; signing, redirects and timeouts are
checked against the real loopback receiver through the real shared client.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math

import httpx
import pytest
from delivery_harness import SAMPLE
from gateway_plugins.webhook import Options, Webhook
from manual_clock import ManualClock
from pydantic import ValidationError
from receiver import Receiver, Reply
from standardwebhooks import Webhook as Verifier

from gateway.destination.base import Services
from gateway.destination.http import make_http_client
from gateway.store import DeliveryRecord

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
NOW = 1_800_000_000.0


def delivery(**over) -> DeliveryRecord:
    fields = dict(
        id="msg_01TEST",
        event_id="evt_01TEST",
        source="revicom",
        route="failures",
        destination="crm",
        state="in_flight",
        attempts=0,
        next_attempt_at=NOW,
        created_at=NOW,
        updated_at=NOW,
        raw=SAMPLE,
        received_at=NOW + 0.25,
        enrichment={"status_text": "Delivered"},
        message_uuid="063474ec",
    )
    fields.update(over)
    return DeliveryRecord(**fields)


def make(handler=None, client=None, clock=None, **options) -> Webhook:
    options.setdefault("url", "https://crm.example.com/hooks")
    if client is None:
        handler = handler or (lambda r: httpx.Response(200))
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    services = Services(client, clock or ManualClock(NOW), None, set())  # type: ignore[arg-type]
    return Webhook("crm", Options.model_validate(options), services)


def answer(status, headers=None, body=b""):
    return make(lambda r: httpx.Response(status, headers=headers or {}, content=body))


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_2xx_is_delivered(status):
    out = await answer(status).deliver(delivery())
    assert (out.kind, out.status) == ("delivered", status)


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 599])
async def test_408_425_and_5xx_are_retried(status):
    out = await answer(status, body=b"try later").deliver(delivery())
    assert (out.kind, out.status, out.error) == ("retry", status, f"HTTP {status}: try later")


async def test_a_503_with_retry_after_passes_the_wait_on():
    out = await answer(503, {"Retry-After": "30"}).deliver(delivery())
    assert (out.kind, out.retry_after) == ("retry", 30.0)


async def test_429_is_throttled_with_retry_after_in_seconds_or_as_a_date():
    out = await answer(429, {"Retry-After": "17"}).deliver(delivery())
    assert (out.kind, out.retry_after) == ("throttled", 17.0)
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    out = await answer(429, {"Retry-After": date}).deliver(delivery())
    assert (out.kind, out.retry_after) == ("throttled", 90.0)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422])
async def test_other_4xx_are_permanent(status):
    out = await answer(status).deliver(delivery())
    assert (out.kind, out.pause_destination) == ("permanent", False)


async def test_410_is_permanent_and_pauses_the_destination():
    out = await answer(410).deliver(delivery())
    assert (out.kind, out.pause_destination) == ("permanent", True)
    assert "paused" in out.error


async def test_a_redirect_is_permanent_and_says_it_was_not_followed():
    out = await answer(301, {"Location": "https://new.example.com/"}).deliver(delivery())
    assert out.kind == "permanent"
    assert "redirect to https://new.example.com/ not followed" in out.error


async def test_connection_errors_and_timeouts_are_retried():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    out = await make(refuse).deliver(delivery())
    assert out.error == "connection error: ConnectError: refused"
    out = await make(slow, timeout="2s").deliver(delivery())
    assert (out.kind, out.error) == ("retry", "timed out after 2s (ReadTimeout)")


async def test_original_payload_is_the_providers_array_byte_for_byte():
    seen = []
    hook = make(lambda r: seen.append(r) or httpx.Response(200))
    await hook.deliver(delivery())
    assert seen[0].content == f"[{SAMPLE}]".encode()
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["webhook-id"] == "msg_01TEST"
    assert "webhook-signature" not in seen[0].headers
    assert seen[0].method == "POST"


async def test_envelope_payload_carries_gateway_metadata_event_and_enrichment():
    seen = []
    hook = make(lambda r: seen.append(r) or httpx.Response(200), payload="envelope")
    await hook.deliver(delivery())
    body = json.loads(seen[0].content)
    assert body == {
        "id": "msg_01TEST",
        "event_id": "evt_01TEST",
        "source": "revicom",
        "route": "failures",
        "received_at": "2027-01-15T08:00:00.250Z",
        "event": json.loads(SAMPLE),
        "enrichment": {"status_text": "Delivered"},
    }
    assert b'"price": 1.10' in seen[0].content  # the event text is spliced in unchanged


async def test_template_payload_sees_event_with_enrichment_and_meta():
    seen = []
    body = (
        '{"uuid": {{ event.message_uuid | tojson }}, "text": {{ event.status_text | tojson }},'
        ' "id": {{ meta.id | tojson }}, "try": {{ meta.attempt }},'
        ' "dest": {{ meta.destination | tojson }}}'
    )
    hook = make(lambda r: seen.append(r) or httpx.Response(200), payload="template", body=body)
    await hook.deliver(delivery(attempts=2))
    assert json.loads(seen[0].content) == {
        "uuid": "063474ec-a34f-4558-90c5-984395000004",
        "text": "Delivered",
        "id": "msg_01TEST",
        "try": 3,
        "dest": "crm",
    }


async def test_a_template_that_renders_invalid_json_is_permanent_and_sends_nothing():
    seen = []
    hook = make(
        lambda r: seen.append(r) or httpx.Response(200),
        payload="template",
        body='{"uuid": {{ event.message_uuid }}}',
    )
    out = await hook.deliver(delivery())
    assert out.kind == "permanent"
    assert "did not render valid JSON" in out.error
    assert seen == []


async def test_templates_are_sandboxed():
    hook = make(payload="template", body='{"x": "{{ event.__class__.__mro__ }}"}')
    out = await hook.deliver(delivery())
    assert out.kind == "permanent"


async def test_headers_and_method_are_sent():
    seen = []
    hook = make(
        lambda r: seen.append(r) or httpx.Response(200),
        method="put",
        headers={"X-Team": "ops", "Content-Type": "application/vnd.x+json"},
    )
    await hook.deliver(delivery())
    assert seen[0].method == "PUT"
    assert seen[0].headers["x-team"] == "ops"
    assert seen[0].headers["content-type"] == "application/vnd.x+json"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_signed_requests_verify_with_the_standardwebhooks_package(transport):
    async with Receiver() as rx:
        client = make_http_client(transport)
        try:
            import time

            hook = make(
                client=client,
                clock=ManualClock(time.time()),
                url=rx.url + "/in",
                secret=SECRET,
                payload="envelope",
            )
            out = await hook.deliver(delivery())
        finally:
            await client.aclose()
    assert out.kind == "delivered"
    got = rx.requests[0]
    assert got.headers["webhook-id"] == "msg_01TEST"
    verified = Verifier(SECRET).verify(got.body, got.headers)
    assert verified["id"] == "msg_01TEST"
    tampered = got.body.replace(b"failures", b"FAILURES")
    with pytest.raises(Exception, match=r"[Ss]ignature"):
        Verifier(SECRET).verify(tampered, got.headers)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_redirects_are_never_followed_by_the_shared_client(transport):
    async with Receiver() as rx:
        rx.script(Reply(302, headers={"Location": rx.url + "/elsewhere"}))
        client = make_http_client(transport)
        try:
            out = await make(client=client, url=rx.url + "/in").deliver(delivery())
        finally:
            await client.aclose()
    assert out.kind == "permanent" and "not followed" in out.error
    assert [r.path for r in rx.requests] == ["/in"]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_stalled_receiver_times_out_after_the_configured_timeout(transport):
    async with Receiver() as rx:
        rx.script(Reply(stall=math.inf))
        client = make_http_client(transport)
        try:
            out = await make(client=client, url=rx.url + "/in", timeout="150ms").deliver(delivery())
        finally:
            await client.aclose()
    assert out.kind == "retry" and out.error.startswith("timed out after 0.15s")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_refused_connection_is_a_connection_error_not_a_timeout(transport):
    async with Receiver() as rx:
        url = rx.url
    client = make_http_client(transport)
    try:
        out = await make(client=client, url=url + "/in").deliver(delivery())
    finally:
        await client.aclose()
    assert out.kind == "retry" and out.error.startswith("connection error: ConnectError")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://x"}, "expected an http:// or https:// URL"),
        ({"url": "https://x", "payload": "template"}, "needs 'body'"),
        ({"url": "https://x", "body": "{}"}, "only used with payload: template"),
        ({"url": "https://x", "payload": "template", "body": "{{ x"}, "template syntax error"),
        ({"url": "https://x", "secret": "abc"}, "whsec_"),
        ({"url": "https://x", "secret": "whsec_***"}, "not valid base64"),
        ({"url": "https://x", "timeout": "soon"}, "expected a duration"),
        ({"url": "https://x", "method": "GET"}, "POST"),
        ({"url": "https://x", "colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_options_are_reported(options, message):
    with pytest.raises(ValidationError, match=message):
        Options.model_validate(options)


def test_an_empty_secret_means_unsigned():
    assert Options.model_validate({"url": "https://x", "secret": ""}).secret is None


def test_options_defaults():
    o = Options.model_validate({"url": "https://x"})
    assert (o.method, o.timeout, o.payload, o.headers, o.secret) == (
        "POST",
        10.0,
        "original",
        {},
        None,
    )


# -- template bodies: the gateway builds the JSON ----------------------------------------------


async def test_a_mapping_body_builds_json_and_keeps_single_expression_types():
    seen = []
    body = {
        "uuid": "{{ event.message_uuid }}",
        "price": "{{ event.price }}",
        "missing": "{{ event.nothing }}",
        "note": "{{ event.status_text }}!",
        "fixed": [1, True, None, "plain"],
    }
    hook = make(lambda r: seen.append(r) or httpx.Response(200), payload="template", body=body)
    out = await hook.deliver(delivery())
    assert out.kind == "delivered"
    assert json.loads(seen[0].content) == {
        "uuid": "063474ec-a34f-4558-90c5-984395000004",
        "price": 1.1,
        "missing": None,
        "note": "Delivered!",
        "fixed": [1, True, None, "plain"],
    }


async def test_a_string_body_escapes_printed_values_and_tojson_prints_json():
    seen = []
    body = '{"text": "{{ event.status_text }}", "raw": {{ event.status_text | tojson }}}'
    hook = make(lambda r: seen.append(r) or httpx.Response(200), payload="template", body=body)
    evil = 'x", "admin": true, "y": "\n'
    await hook.deliver(delivery(enrichment={"status_text": evil}))
    assert json.loads(seen[0].content) == {"text": evil, "raw": evil}


@pytest.mark.parametrize(
    "body, problem",
    [
        ('{"a": {{ event.x }}', "does not render valid JSON"),
        ('{"a": "{{ event.x }}" "b": 1}', "does not render valid JSON"),
        ({"a": ["{% if %}"]}, "body.a[0]: template syntax error"),
    ],
)
def test_check_sees_bodies_that_cannot_render_json(body, problem):
    with pytest.raises(ValidationError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Options.model_validate({"url": "https://x", "payload": "template", "body": body})
