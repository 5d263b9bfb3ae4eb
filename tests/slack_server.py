"""A loopback stand-in for Slack that answers the way Slack documents, and records requests.

    async with SlackServer(token="xoxb-test") as slack:
        slack.webhook_url          # an incoming webhook URL on this server
        slack.api_url              # a Web API base; chat.postMessage lives under it
        slack.script(webhook_error(404, "channel_not_found"))     # the next answer
        slack.script(api_error("ratelimited", retry_after=30))
        ... deliver ...
        slack.requests[0].json, slack.requests[0].headers["authorization"]

Unscripted requests get Slack's own checks
(https://api.slack.com/messaging/webhooks#handling_errors,
https://api.slack.com/methods/chat.postMessage#errors):

- incoming webhook: ``200 ok``; ``400 invalid_payload`` for a body that is not a JSON object;
  ``400 no_text`` without text and blocks; ``400 invalid_blocks`` for blocks over Slack's limits.
- chat.postMessage: always HTTP 200 with JSON: ``not_authed`` / ``invalid_auth`` for a missing or
  wrong Bearer token, ``channel_not_found``, ``no_text``, ``invalid_blocks``, ``msg_too_long``,
  ``thread_not_found`` for an unknown ``thread_ts``; else ``{"ok": true, "channel", "ts",
  "message"}`` with a fresh ``ts`` per message.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WEBHOOK_PATH = "/services/T000/B000/XXXXSECRET"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"


def webhook_error(status: int, code: str, retry_after: int | None = None) -> Answer:
    """An incoming webhook's error answer: the HTTP status with the error string as body."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Answer(status, code, headers)


def api_error(code: str, retry_after: int | None = None, **extra: Any) -> Answer:
    """A Web API error: HTTP 200 (429 for ``ratelimited``, as Slack does) with ``ok: false``."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    status = 429 if code == "ratelimited" else 200
    return Answer(
        status, json.dumps({"ok": False, "error": code, **extra}), headers, "application/json"
    )


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class SlackServer:
    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("#ops",)):
        self.token = token
        self.channels = {c: f"C{n:08d}" for n, c in enumerate(channels, 1)}
        self.requests: list[Request] = []
        self.posted: dict[str, dict[str, Any]] = {}  # ts -> message
        self._scripted: deque[Answer] = deque()
        self._ts = 1_700_000_000_000100
        self._runner: web.AppRunner | None = None
        self.base = ""

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with `answers`, in order, instead of Slack's checks."""
        self._scripted.extend(answers)

    @property
    def webhook_url(self) -> str:
        return self.base + WEBHOOK_PATH

    @property
    def api_url(self) -> str:
        return self.base + "/api"

    async def __aenter__(self) -> SlackServer:
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._webhook)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Request:
        rec = Request(request.path, dict(request.headers), await request.read())
        self.requests.append(rec)
        return rec

    @staticmethod
    def _answer(a: Answer) -> web.Response:
        return web.Response(
            status=a.status, text=a.body, headers=a.headers, content_type=a.content_type
        )

    async def _webhook(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if self._scripted:
            return self._answer(self._scripted.popleft())
        try:
            body = rec.json
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._answer(webhook_error(400, "invalid_payload"))
        problem = _message_problem(body)
        if problem:
            return self._answer(webhook_error(400, problem))
        return self._answer(Answer())

    async def _post_message(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if self._scripted:
            return self._answer(self._scripted.popleft())
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self._answer(api_error("not_authed"))
        if auth.removeprefix("Bearer ") != self.token:
            return self._answer(api_error("invalid_auth"))
        body = rec.json
        channel = self.channels.get(body.get("channel"))
        if channel is None and body.get("channel") not in self.channels.values():
            return self._answer(api_error("channel_not_found"))
        problem = _message_problem(body)
        if problem:
            return self._answer(api_error(problem))
        thread_ts = body.get("thread_ts")
        if thread_ts is not None and thread_ts not in self.posted:
            return self._answer(api_error("thread_not_found"))
        self._ts += 100
        ts = f"{self._ts // 1_000_000}.{self._ts % 1_000_000:06d}"
        self.posted[ts] = body
        answer = {
            "ok": True,
            "channel": channel or body["channel"],
            "ts": ts,
            "message": {"text": body.get("text", ""), "ts": ts},
        }
        return self._answer(Answer(200, json.dumps(answer), {}, "application/json"))


def _message_problem(body: dict[str, Any]) -> str | None:
    """Slack's size and shape checks that make a message fail."""
    text, blocks = body.get("text"), body.get("blocks")
    if not text and not blocks:
        return "no_text"
    if isinstance(text, str) and len(text) > 40_000:
        return "msg_too_long"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "invalid_blocks"
    for b in blocks:
        if b.get("type") == "section":
            t = (b.get("text") or {}).get("text", "")
            fields = b.get("fields") or []
            if (not t and not fields) or len(t) > 3000 or len(fields) > 10:
                return "invalid_blocks"
            if any(len(f.get("text", "")) > 2000 or not f.get("text") for f in fields):
                return "invalid_blocks"
        elif b.get("type") == "header":
            t = (b.get("text") or {}).get("text", "")
            if not t or len(t) > 150:
                return "invalid_blocks"
        elif b.get("type") == "context":
            elements = b.get("elements") or []
            if not elements or len(elements) > 10:
                return "invalid_blocks"
    return None
