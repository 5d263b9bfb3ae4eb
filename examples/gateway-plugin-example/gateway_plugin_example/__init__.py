"""An example callback-gateway plugin: one enricher, one filter, one destination type, and
event hooks. See README.md for configuration.

Everything here uses only the public plugin API: ``from gateway import hookimpl``, the hook
names in ``gateway.hookspecs``, and the destination kit ``gateway.destination`` (the
``HTTPDestination`` base class, which sends and classifies, and the sandboxed template helpers).
Components are classes with an ``Options`` pydantic model, which the gateway validates (so
``callback-gateway check`` reports bad options with their key path).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway import hookimpl
from gateway.destination import (
    HTTPDestination,
    Outcome,
    Services,
    compile_template,
    render_error,
    template_context,
)

__version__ = "0.1.0"
log = logging.getLogger(__name__)

FINAL = {"delivered", "undelivered", "unsent"}


# -- an enricher -----------------------------------------------------------------------------
class Team:
    """Adds ``team``: who owns messages of this channel."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        teams: dict[str, str] = {}
        default: str | None = None

    def __init__(self, options: Options) -> None:
        self.options = options

    def enrich(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
        team = self.options.teams.get(str(event.get("channel_type")), self.options.default)
        return {"team": team} if team else None


# -- a filter --------------------------------------------------------------------------------
class OnlyChannels:
    """Keeps events of the listed channels; drops the others with a reason."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        channels: list[str] = Field(min_length=1)

    def __init__(self, options: Options) -> None:
        self.channels = set(options.channels)

    async def keep(self, event: dict[str, Any], meta: dict[str, Any]) -> bool | str:
        channel = event.get("channel_type")
        if channel in self.channels:
            return True
        return f"channel {channel} is not one of {sorted(self.channels)}"


# -- a destination type ----------------------------------------------------------------------
class Chat(HTTPDestination):
    """Posts ``{"text": ...}`` to a chat incoming webhook. `HTTPDestination` sends it within
    ``timeout`` and classifies the answer (2xx delivered, 429 throttled, 408/425/5xx and
    connection errors retry, 410 pauses the destination, other 4xx permanent)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: str
        text: str = "{{ event.message_uuid }}: {{ event.status or event.callback_event }}"
        timeout: float = Field(10.0, gt=0)

        @field_validator("text")
        @classmethod
        def _text(cls, v: str) -> str:
            compile_template(v, "text")  # `check` reports a syntax error with its line
            return v

    def __init__(self, name: str, options: Options, services: Services) -> None:
        super().__init__(name, options, services)
        self.template = compile_template(options.text, "text")

    def preview(self, delivery: Any) -> dict[str, Any]:
        """What `deliver` would post (``callback-gateway explain`` shows it)."""
        return {"text": self.template.render(template_context(delivery))}

    async def deliver(self, delivery: Any) -> Outcome:
        try:
            body = json.dumps(self.preview(delivery)).encode()
        except Exception as e:  # sandbox violations, filter errors
            return Outcome.permanent(render_error(e))
        headers = {"content-type": "application/json", "webhook-id": delivery.id}
        answer = await self.request("POST", self.options.url, body, headers)
        return answer if isinstance(answer, Outcome) else self.classify(answer)


# -- registration hooks ----------------------------------------------------------------------
@hookimpl
def register_enrichers(register: Any) -> None:
    register("team", Team)


@hookimpl
def register_filters(register: Any) -> None:
    register("only_channels", OnlyChannels)


@hookimpl
def register_destinations(register: Any) -> None:
    register("chat", Chat)


# -- event hooks -----------------------------------------------------------------------------
@hookimpl
def filter_event(event: dict[str, Any], meta: dict[str, Any]) -> bool | None:
    """Our own canary messages test the pipeline up to the gateway; nobody needs them after."""
    if str(event.get("message_uuid", "")).startswith("canary-"):
        return False
    return None


@hookimpl
async def enrich_event(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
    """Async hooks work: the gateway awaits what a hook returns."""
    await asyncio.sleep(0)
    if event.get("callback_event") in ("delivered", "sent"):
        return {"final": event.get("status") in FINAL}
    return None


@hookimpl
def delivery_finished(delivery: dict[str, Any], outcome: dict[str, Any]) -> None:
    path = os.environ.get("GATEWAY_EXAMPLE_AUDIT_LOG")
    if not path:
        return
    line = {
        "id": delivery.get("id"),
        "destination": delivery.get("destination"),
        "route": delivery.get("route"),
        "state": outcome.get("state"),
        "error": outcome.get("error"),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


@hookimpl
def startup(gateway: Any) -> None:
    log.info("example plugin started")


@hookimpl
def shutdown(gateway: Any) -> None:
    log.info("example plugin stopped")
