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
(see `gateway.destination.payload.template_context`). Every value a template prints is escaped for
Slack (``&``, ``<``, ``>``; https://api.slack.com/reference/surfaces/formatting#escaping), so text
from a customer cannot mention ``<!channel>`` or forge links; write links and mentions literally
in the template (``<{{ event.url }}|open>``), or print a trusted value with ``|safe``.
In ``plain_text`` objects nothing is escaped. A block whose text renders empty is left out, so
``{% if %}`` inside a block's text makes the block conditional.

Sizes are kept within Slack's documented limits before sending
(https://api.slack.com/reference/block-kit/blocks): text 40,000 characters, 50 blocks, section
text 3,000, section fields 10 of 2,000, header 150, context 10 elements. Longer text is cut at
a safe place (never inside ``<...>`` or an ``&...;`` entity) and ends with "…"; extra blocks are
replaced by a note saying how many were left out.

Classification (the engine owns retries and the rate limit, by default one message per second):

- incoming webhook (https://api.slack.com/messaging/webhooks#handling_errors): 2xx delivered;
  429 throttled (``Retry-After`` waited out); 408, 425, 5xx, timeouts and connection errors
  retry; every other answer (``invalid_payload``, ``no_service``, ``channel_not_found``,
  ``channel_is_archived``, ``action_prohibited``, ``invalid_token``, ...) permanent.
- chat.postMessage (https://api.slack.com/methods/chat.postMessage#errors): HTTP 200 with
  ``ok: true`` delivered; ``ok: false`` with ``ratelimited`` throttled, ``internal_error``,
  ``fatal_error``, ``service_unavailable``, ``request_timeout`` retry, any other error permanent;
  HTTP 429 throttled, 5xx retry.

Threading (``thread: true``, Web API only): the first message posted for a ``message_uuid``
becomes the thread root, and its ``ts`` is kept in the store (mark
``slack-thread:<destination>:<channel>:<message_uuid>``); later events for that message are
posted with ``thread_ts``. While the root is being posted, other events of the same message
wait (a throttled try, not counted) instead of starting a second thread.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import httpx
from jinja2 import Template, TemplateSyntaxError
from markupsafe import Markup
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway import hookimpl
from gateway.config.redact import scrub
from gateway.destination.base import Outcome, Services
from gateway.destination.http import parse_retry_after, read_capped
from gateway.destination.payload import _ENV, template_context
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
RETRYABLE_STATUS = frozenset({408, 425})
SNIPPET = 300

# Slack's limits (https://api.slack.com/reference/block-kit/blocks,
# https://api.slack.com/methods/chat.postMessage#truncating).
MAX_TEXT = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2_000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_MARKDOWN_TEXT = 12_000
ELLIPSIS = "…"

#: How long a thread root may stay "being posted" before another event takes over (a crash).
THREAD_CLAIM_STALE = 300.0
#: How long an event waits before checking again whether its thread root was posted.
THREAD_WAIT = 2.0


def slack_escape(value: Any) -> Any:
    """Escape what a template prints for Slack mrkdwn; `Markup` (``|safe``) passes as is."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(value: Any) -> Any:
    return "" if value is None else value


# Overlays of the payload module's sandboxed environment: same sandbox, different finalize.
MRKDWN_ENV = _ENV.overlay(finalize=slack_escape)
PLAIN_ENV = _ENV.overlay(finalize=_plain)


def _compile(source: str, env: Any, where: str) -> Template:
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise ValueError(
            f"{where}: template syntax error on line {e.lineno}: {e.message}"
        ) from None


class BlockTemplates:
    """Block Kit blocks from YAML whose string leaves are templates (compiled up front)."""

    def __init__(self, blocks: list[Any]) -> None:
        self.tree = self._compile(blocks, "blocks", plain=False)

    def _compile(self, node: Any, where: str, plain: bool) -> Any:
        if isinstance(node, str):
            return _compile(node, PLAIN_ENV if plain else MRKDWN_ENV, where)
        if isinstance(node, list):
            return [self._compile(v, f"{where}[{i}]", plain) for i, v in enumerate(node)]
        if isinstance(node, dict):
            is_plain = node.get("type") == "plain_text"
            return {
                k: v if k == "type" else self._compile(v, f"{where}.{k}", is_plain)
                for k, v in node.items()
            }
        return node

    def render(self, context: dict[str, Any]) -> list[Any]:
        return _render(self.tree, context)


def _render(node: Any, context: dict[str, Any]) -> Any:
    if isinstance(node, Template):
        return node.render(context)
    if isinstance(node, list):
        return [_render(v, context) for v in node]
    if isinstance(node, dict):
        return {k: _render(v, context) for k, v in node.items()}
    return node


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
        _compile(v, MRKDWN_ENV, "text")
        return v

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v is None:
            return v
        for i, block in enumerate(v):
            if not isinstance(block.get("type"), str):
                raise ValueError(f"blocks[{i}] needs a 'type' (section, header, context, ...)")
        BlockTemplates(v)
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


# -- fitting a message into Slack's limits -------------------------------------------------


#: The name the model is imported under (``from gateway_plugins.slack import Options``).
Options = SlackOptions


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in "…", never inside ``<...>`` (a link
    or mention) or an ``&...;`` entity, which Slack would show broken."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - len(ELLIPSIS))]
    open_at = cut.rfind("<")
    if open_at > cut.rfind(">"):
        cut = cut[:open_at]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:] and len(cut) - amp <= 10:
        cut = cut[:amp]
    return cut + ELLIPSIS


def _text_obj(obj: Any, limit: int) -> Any:
    """A text object with its text clipped, or None when it is missing or empty."""
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return obj
    if not obj["text"].strip():
        return None
    return {**obj, "text": clip(obj["text"], limit)}


def fit_block(block: dict[str, Any]) -> dict[str, Any] | None:
    """One block within its limits, or None when it rendered empty (left out)."""
    kind = block.get("type")
    if kind == "section":
        out = dict(block)
        text = _text_obj(block.get("text"), MAX_SECTION_TEXT)
        if text is None:
            out.pop("text", None)
        else:
            out["text"] = text
        if isinstance(block.get("fields"), list):
            fields = [f for f in (_text_obj(f, MAX_FIELD_TEXT) for f in block["fields"]) if f]
            if fields:
                out["fields"] = fields[:MAX_FIELDS]
            else:
                out.pop("fields")
        if "text" not in out and "fields" not in out:
            return None
        return out
    if kind == "header":
        text = _text_obj(block.get("text"), MAX_HEADER_TEXT)
        return None if text is None else {**block, "text": text}
    if kind == "context" and isinstance(block.get("elements"), list):
        elements = [
            e
            for e in (
                _text_obj(e, MAX_SECTION_TEXT) if e.get("type") != "image" else e
                for e in block["elements"]
                if isinstance(e, dict)
            )
            if e
        ]
        return {**block, "elements": elements[:MAX_CONTEXT_ELEMENTS]} if elements else None
    if kind == "markdown" and isinstance(block.get("text"), str):
        if not block["text"].strip():
            return None
        return {**block, "text": clip(block["text"], MAX_MARKDOWN_TEXT)}
    return block


def fit_blocks(blocks: list[Any]) -> list[Any]:
    """Blocks that Slack accepts by size: empty ones dropped, texts clipped, at most 50."""
    fitted = [b for b in (fit_block(b) if isinstance(b, dict) else b for b in blocks) if b]
    if len(fitted) > MAX_BLOCKS:
        left_out = len(fitted) - (MAX_BLOCKS - 1)
        note = {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"{ELLIPSIS} {left_out} more blocks not shown"}
            ],
        }
        fitted = [*fitted[: MAX_BLOCKS - 1], note]
    return fitted


# -- the destination -------------------------------------------------------------------------


class Slack:
    """See the module docstring."""

    Options = SlackOptions
    #: The engine's token bucket when the destination sets no ``rate_limit``: Slack takes about
    #: one message per second per webhook or channel (https://api.slack.com/apis/rate-limits).
    default_rate_limit = "1/s"

    def __init__(self, name: str, options: SlackOptions, services: Services) -> None:
        self.name = name
        self.options = options
        self.services = services
        self.text = _compile(options.text, MRKDWN_ENV, "text")
        self.blocks = BlockTemplates(options.blocks) if options.blocks else None
        own = {s for s in (options.token, options.webhook_url) if s}
        self.secrets = set(services.secrets) | own
        if options.webhook_url:
            self.url = options.webhook_url
            self.headers = {"content-type": "application/json; charset=utf-8"}
        else:
            self.url = options.api_url.rstrip("/") + "/chat.postMessage"
            self.headers = {
                "content-type": "application/json; charset=utf-8",
                "authorization": f"Bearer {options.token}",
            }

    def message(self, delivery: DeliveryRecord) -> dict[str, Any]:
        """The JSON body without ``channel``/``thread_ts``; `ValueError` when a template fails
        or the message would be empty."""
        context = template_context(delivery)
        try:
            text = self.text.render(context)
            blocks = fit_blocks(self.blocks.render(context)) if self.blocks else []
        except Exception as e:  # sandbox violations, filter errors
            raise ValueError(f"template failed: {type(e).__name__}: {e}") from None
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

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        try:
            body = self.message(delivery)
        except ValueError as e:
            return Outcome.permanent(self._scrub(str(e)))
        if self.options.webhook_url:
            return await self._post_webhook(body)
        body = {"channel": self.options.channel, **body}
        if self.options.thread and delivery.message_uuid:
            return await self._post_threaded(delivery, body)
        outcome, _ = await self._post_api(body)
        return outcome

    # -- incoming webhook ----------------------------------------------------------------------

    async def _post_webhook(self, body: dict[str, Any]) -> Outcome:
        resp, data, failed = await self._post(body)
        if failed is not None:
            return failed
        assert resp is not None
        status = resp.status_code
        if 200 <= status < 300:
            return Outcome.delivered(status)
        snippet = data[:SNIPPET].decode("utf-8", "replace").strip()
        text = self._scrub(f"Slack answered HTTP {status}" + (f": {snippet}" if snippet else ""))
        return self._http_failure(resp, text)

    def _http_failure(self, resp: httpx.Response, text: str) -> Outcome:
        status = resp.status_code
        retry_after = parse_retry_after(resp.headers.get("retry-after"), self.services.clock.now())
        if status == 429:
            return Outcome.throttled(text, retry_after, status)
        if status in RETRYABLE_STATUS or status >= 500:
            return Outcome.retry(text, status, retry_after)
        return Outcome.permanent(text, status)

    # -- chat.postMessage ----------------------------------------------------------------------

    async def _post_api(self, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any]]:
        """Post and classify; also returns Slack's JSON answer ({} when there is none)."""
        resp, data, failed = await self._post(body)
        if failed is not None:
            return failed, {}
        assert resp is not None
        status = resp.status_code
        if status != 200:
            snippet = data[:SNIPPET].decode("utf-8", "replace").strip()
            text = f"Slack answered HTTP {status}" + (f": {snippet}" if snippet else "")
            return self._http_failure(resp, self._scrub(text)), {}
        try:
            answer = json.loads(data)
            ok = answer["ok"]
        except (ValueError, KeyError, TypeError):
            snippet = data[:SNIPPET].decode("utf-8", "replace").strip()
            return Outcome.retry(
                self._scrub(f"Slack answered HTTP 200 without a JSON 'ok' field: {snippet!r}"),
                status,
            ), {}
        if ok is True:
            return Outcome.delivered(status), answer
        error = str(answer.get("error") or "unknown_error")
        text = f"Slack chat.postMessage error: {error}"
        problems = (answer.get("response_metadata") or {}).get("messages")
        if isinstance(problems, list) and problems:
            text += " (" + "; ".join(str(p) for p in problems[:5])[:SNIPPET] + ")"
        text = self._scrub(text)
        if error == "ratelimited":
            retry_after = parse_retry_after(
                resp.headers.get("retry-after"), self.services.clock.now()
            )
            return Outcome.throttled(text, retry_after, status), answer
        if error in RETRYABLE_ERRORS:
            return Outcome.retry(text, status), answer
        return Outcome.permanent(text, status), answer

    async def _post_threaded(self, delivery: DeliveryRecord, body: dict[str, Any]) -> Outcome:
        store, now = self.services.store, self.services.clock.now()
        key = f"slack-thread:{self.name}:{self.options.channel}:{delivery.message_uuid}"
        mark = await store.get_mark(key)
        if mark is not None and mark[0] == "2":  # the root was posted: reply in its thread
            outcome, answer = await self._post_api({**body, "thread_ts": mark[1]})
            if outcome.kind == "permanent" and answer.get("error") in LOST_THREAD_ERRORS:
                await store.set_mark(key, None, now)  # the root is gone: next try starts anew
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
                await store.set_mark(key, claim, now, rank="1")  # its poster died: take over
        else:
            advanced, _ = await store.advance_mark(key, "1", claim, now)
            if not advanced:  # lost the race to another event of the same message
                return Outcome.throttled(
                    "waiting for the first message of this message_uuid's thread",
                    THREAD_WAIT,
                    status=None,
                )
        outcome, answer = await self._post_api(body)
        ts = answer.get("ts")
        if outcome.kind == "delivered" and isinstance(ts, str):
            await store.set_mark(key, ts, self.services.clock.now(), rank="2")
        elif outcome.kind != "delivered":
            await store.set_mark(key, None, self.services.clock.now())  # let any event be root
        return outcome

    # -- HTTP ----------------------------------------------------------------------------------

    async def _post(
        self, body: dict[str, Any]
    ) -> tuple[httpx.Response | None, bytes, Outcome | None]:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        timeout = self.options.timeout
        try:
            async with asyncio.timeout(timeout):
                async with self.services.http.stream(
                    "POST",
                    self.url,
                    content=content,
                    headers=self.headers,
                    timeout=timeout,
                ) as resp:
                    data = await read_capped(resp)
        except (TimeoutError, httpx.TimeoutException):
            return None, b"", Outcome.retry(f"timed out after {timeout:g}s")
        except httpx.HTTPError as e:
            text = self._scrub(f"connection error: {type(e).__name__}: {e}".rstrip(": "))
            return None, b"", Outcome.retry(text)
        return resp, data, None


@hookimpl
def register_destinations(register: Any) -> None:
    register("slack", Slack)
