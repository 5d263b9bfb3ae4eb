"""The ``slack`` destination: one Slack message per delivery.

Options (``destinations.<name>``), exactly one of the two modes::

    webhook_url: https://hooks.slack.com/services/T000/B000/XXXX   # incoming webhook
    # or the Web API (chat.postMessage):
    token: xoxb-...               # sent as "Authorization: Bearer <token>"
    channel: "#ops"               # a name or an id (C0123...)
    api_url: https://slack.com/api   # the Web API base; /chat.postMessage is appended
    thread: false                 # true: later events of a message_uuid reply in its thread
    text: "{{ event.message_uuid }} {{ event.status }}"   # a template (mrkdwn)
    blocks:                       # optional Block Kit blocks; every string in them is a template
      - {type: section, text: {type: mrkdwn, text: "*{{ event.status }}*"}}
    timeout: 10s                  # the whole request

Templates are sandboxed Jinja2 over ``event`` (provider fields with enrichments) and ``meta``
(`gateway.destination.template_context`). Every value a template prints is escaped for Slack,
so text from a customer cannot mention ``<!channel>`` or forge links; write links and mentions
literally in the template (``<{{ event.url }}|open>``), or print a trusted value with ``|safe``.
A block whose text renders empty is left out, so ``{% if %}`` inside a block's text makes the
block conditional. Messages are fitted into Slack's size limits before sending (escaping,
blocks and limits: `gateway_plugins.slack_blocks`).

Classification (the engine owns retries and the rate limit, by default one message per second):

- incoming webhook (https://api.slack.com/messaging/webhooks#handling_errors): as every
  `HTTPDestination`: 2xx delivered; 429 throttled (``Retry-After`` waited out); 408, 425, 5xx,
  timeouts and connection errors retry; 410 (``channel_is_archived``) permanent and the
  destination paused until resumed; every other answer (``invalid_payload``, ``no_service``,
  ``channel_not_found``, ``action_prohibited``, ``invalid_token``, ...) permanent.
- chat.postMessage (https://api.slack.com/methods/chat.postMessage#errors): HTTP 200 with
  ``ok: true`` delivered; ``ok: false`` with ``ratelimited`` throttled, ``internal_error``,
  ``fatal_error``, ``service_unavailable``, ``request_timeout`` retry, any other error permanent;
  HTTP 429 throttled, 5xx retry.

Threading (``thread: true``, Web API only): the first message posted for a ``message_uuid``
becomes the thread root, and its ``ts`` is kept as a mark (``services.marks``, key
``slack-thread:<destination>:<channel>:<message_uuid>``); later events for that message are
posted with ``thread_ts``. While the root is being posted, other events of the same message
wait (a throttled try, not counted) instead of starting a second thread. The mark is a plugin
mark: forgotten once unwritten for ``retention.dedupe`` (at least 25h), after which a late
event of that message starts a new thread.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
from gateway_plugins.slack_blocks import (
    MAX_TEXT,
    MRKDWN_ENV,
    block_templates,
    clip,
    fit_blocks,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway import hookimpl
from gateway.destination import (
    Answer,
    HTTPDestination,
    Marks,
    Outcome,
    Services,
    compile_template,
    render_error,
    template_context,
)
from gateway.store import DeliveryRecord
from gateway.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]

DEFAULT_API_URL = "https://slack.com/api"
DEFAULT_TEXT = (
    "*{{ event.status or event.callback_event }}* {{ event.channel_type }} message"
    " `{{ event.message_uuid }}`"
    "{% if event.error_code %} (error {{ event.error_code }}"
    "{% if event.error_text %}: {{ event.error_text }}{% endif %}){% endif %}"
)
#: chat.postMessage errors worth another try (DESIGN "Interface details").
RETRYABLE_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
#: chat.postMessage errors meaning the stored thread root is gone: post a new root instead.
LOST_THREAD_ERRORS = frozenset({"thread_not_found", "invalid_thread_ts", "message_not_found"})

#: How long a thread root may stay "being posted" before another event takes over (a crash).
THREAD_CLAIM_STALE = 300.0
#: How long an event waits before checking again whether its thread root was posted.
THREAD_WAIT = 2.0


class SlackOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_url: str | None = None
    token: str | None = None
    channel: str | None = None
    api_url: str = DEFAULT_API_URL
    thread: bool = False
    text: str = DEFAULT_TEXT
    blocks: list[dict[str, Any]] | None = None
    timeout: Duration = Field(default=10.0, gt=0)

    @field_validator("webhook_url", "api_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            url = httpx.URL(v)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected an http:// or https:// URL")  # the value may be secret
        return v

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        compile_template(v, "text", MRKDWN_ENV)
        return v

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v is None:
            return v
        for i, block in enumerate(v):
            if not isinstance(block.get("type"), str):
                raise ValueError(f"blocks[{i}] needs a 'type' (section, header, context, ...)")
        block_templates(v)
        return v

    @model_validator(mode="after")
    def _mode(self) -> SlackOptions:
        api = self.token is not None or self.channel is not None
        if self.webhook_url is not None and api:
            raise ValueError(
                "use either 'webhook_url' (incoming webhook) or 'token' + 'channel'"
                " (chat.postMessage), not both"
            )
        if self.webhook_url is None and not (self.token and self.channel):
            raise ValueError(
                "needs 'webhook_url' (incoming webhook) or both 'token' and 'channel'"
                " (chat.postMessage)"
            )
        if self.thread and self.webhook_url is not None:
            raise ValueError(
                "'thread: true' needs 'token' + 'channel': incoming webhooks do not say which"
                " message they posted, so there is no thread to reply in"
            )
        return self


#: The name the model is imported under (``from gateway_plugins.slack import Options``).
Options = SlackOptions


class Slack(HTTPDestination):
    """See the module docstring; sending and HTTP classification come from `HTTPDestination`."""

    Options = SlackOptions
    options: SlackOptions
    label = "Slack answered HTTP"
    #: The engine's token bucket when the destination sets no ``rate_limit``: Slack takes about
    #: one message per second per webhook or channel (https://api.slack.com/apis/rate-limits).
    default_rate_limit = "1/s"

    def __init__(self, name: str, options: SlackOptions, services: Services) -> None:
        super().__init__(name, options, services)
        self.text = compile_template(options.text, "text", MRKDWN_ENV)
        self.blocks = block_templates(options.blocks) if options.blocks else None
        self.secrets |= {s for s in (options.token, options.webhook_url) if s}
        self.marks: Marks | None = services.marks
        self.headers = {"content-type": "application/json; charset=utf-8"}
        if options.webhook_url:
            self.url = options.webhook_url
        else:
            self.url = options.api_url.rstrip("/") + "/chat.postMessage"
            self.headers["authorization"] = f"Bearer {options.token}"

    def message(self, delivery: DeliveryRecord) -> dict[str, Any]:
        """The JSON body without ``channel``/``thread_ts``; `ValueError` when a template fails
        or the message would be empty."""
        context = template_context(delivery)
        try:
            text = self.text.render(context)
            blocks = fit_blocks(self.blocks.render(context)) if self.blocks else []
        except Exception as e:  # sandbox violations, filter errors
            raise ValueError(render_error(e)) from None
        body: dict[str, Any] = {}
        if text.strip():
            body["text"] = clip(text, MAX_TEXT)
        if blocks:
            body["blocks"] = blocks
        if not body:
            raise ValueError(
                "nothing to send: 'text' rendered empty and there are no blocks"
                " (Slack would answer no_text)"
            )
        return body

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        try:
            body = self.message(delivery)
        except ValueError as e:
            return Outcome.permanent(self.scrub(str(e)))
        if self.options.webhook_url:
            answer = await self._post(body)
            return answer if isinstance(answer, Outcome) else self.classify(answer)
        body = {"channel": self.options.channel, **body}
        if self.options.thread and delivery.message_uuid and self.marks is not None:
            return await self._post_threaded(delivery, body, self.marks)
        outcome, _ = await self._post_api(body)
        return outcome

    async def _post(self, body: dict[str, Any]) -> Answer | Outcome:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return await self.request("POST", self.url, content, self.headers)

    # -- chat.postMessage ----------------------------------------------------------------------

    async def _post_api(self, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        """Post and classify; also returns Slack's JSON answer ({} when there is none)."""
        answer = await self._post(body)
        if isinstance(answer, Outcome):
            return answer, {}
        if answer.status != 200:
            return self.classify(answer), {}
        try:
            reply = json.loads(answer.body)
            ok = reply["ok"]
        except (ValueError, KeyError, TypeError):
            text = f"Slack answered HTTP 200 without a JSON 'ok' field: {answer.snippet()!r}"
            return Outcome.retry(self.scrub(text), answer.status), {}
        if ok is True:
            return Outcome.delivered(answer.status), reply
        error = str(reply.get("error") or "unknown_error")
        text = f"Slack chat.postMessage error: {error}"
        problems = (reply.get("response_metadata") or {}).get("messages")
        if isinstance(problems, list) and problems:
            text += " (" + "; ".join(str(p) for p in problems[:5])[:300] + ")"
        text = self.scrub(text)
        if error == "ratelimited":
            return Outcome.throttled(text, self.retry_after(answer), answer.status), reply
        if error in RETRYABLE_ERRORS:
            return Outcome.retry(text, answer.status), reply
        return Outcome.permanent(text, answer.status), reply

    async def _post_threaded(
        self, delivery: DeliveryRecord, body: dict[str, Any], marks: Marks
    ) -> Outcome:
        now = self.services.clock.now()
        key = f"slack-thread:{self.name}:{self.options.channel}:{delivery.message_uuid}"
        mark = await marks.get(key)
        if mark is not None and mark[0] == "2":  # the root was posted: reply in its thread
            outcome, answer = await self._post_api({**body, "thread_ts": mark[1]})
            if outcome.kind == "permanent" and answer.get("error") in LOST_THREAD_ERRORS:
                await marks.set(key, None)  # the root is gone: next try starts anew
                return Outcome.retry(f"{outcome.error}; the thread root is gone, posting anew")
            return outcome
        claim = f"{delivery.id} {now!r}"
        if mark is not None:  # another event is posting the root
            holder, _, since = mark[1].partition(" ")
            if holder != delivery.id:
                if now - float(since or 0) < THREAD_CLAIM_STALE:
                    return Outcome.throttled(
                        "waiting for the first message of this message_uuid's thread",
                        THREAD_WAIT,
                        status=None,
                    )
                await marks.set(key, claim, rank="1")  # its poster died: take over
        else:
            advanced, _ = await marks.advance(key, "1", claim)
            if not advanced:  # lost the race to another event of the same message
                return Outcome.throttled(
                    "waiting for the first message of this message_uuid's thread",
                    THREAD_WAIT,
                    status=None,
                )
        outcome, answer = await self._post_api(body)
        ts = answer.get("ts")
        if outcome.kind == "delivered" and isinstance(ts, str):
            await marks.set(key, ts, rank="2")
        elif outcome.kind != "delivered":
            await marks.set(key, None)  # let any event be root
        return outcome


@hookimpl
def register_destinations(register: Any) -> None:
    register("slack", Slack)
