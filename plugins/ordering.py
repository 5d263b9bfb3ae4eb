"""The ``ordering`` filter: never forward a status older than, or ranked below, the last one
forwarded for the same message.

The provider does not guarantee order (contract/CALLBACKS.md, "Ordering is not guaranteed"): a
resent ``sent`` can arrive after ``delivered``. Each message has three independent dimensions:

- ``status``: ``sent`` ranks below the final statuses ``delivered``, ``undelivered``, ``unsent``;
  within a rank the later ``status_time`` wins;
- ``read``: ``read`` and ``unread``, the later ``status_time`` wins;
- ``price``: the later ``price_time`` wins.

Other events (``click``, ``inbound_sent``, anything without a ``message_uuid``) pass untouched.

Scope: the last forwarded position is kept **per route** (mark key
``ordering:<route>:<message_uuid>:<dimension>``), because each route forwards to its own
destinations: a ``delivered`` that one route forwards must not stop another route from
forwarding it too. Marks live in the store, so the protection survives restarts; they are
forgotten once unwritten for ``retention.dedupe`` (at least 25h).

On by default: the chain adds this filter to every route unless the route sets
``ordering: false`` (or the whole gateway sets ``filters: {ordering: {automatic: false}}``, after
which routes can still list ``ordering`` in ``filter:``). An event evaluated twice (the router
retrying it after a crash) is recognised by its event id and kept.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway import hookimpl

#: status -> (dimension, rank within the dimension)
STATUS_RANKS = {
    "sent": ("status", 1),
    "delivered": ("status", 2),
    "undelivered": ("status", 2),
    "unsent": ("status", 2),
    "read": ("read", 1),
    "unread": ("read", 1),
}


def _sortable_time(value: Any) -> str:
    """A UTC time that sorts as a string; "" (lowest) when missing or unreadable."""
    if not isinstance(value, str):
        return ""
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return ""
    t = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def position(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(dimension, sortable rank, label) of an event, or None when ordering does not apply."""
    if event.get("callback_event") == "price":
        when = event.get("price_time")
        return "price", f"0|{_sortable_time(when)}", f"price at {when}"
    status = event.get("status")
    if isinstance(status, str) and status in STATUS_RANKS:
        dimension, rank = STATUS_RANKS[status]
        when = event.get("status_time")
        return dimension, f"{rank}|{_sortable_time(when)}", f"{status} at {when}"
    return None


class Ordering:
    """Drops an event whose position is not above the last one this route forwarded."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        #: Add this filter to every route (routes opt out with ``ordering: false``).
        automatic: bool = True

    def __init__(self, options: Options) -> None:
        self.options = options

    async def keep(self, event: dict[str, Any], meta: dict[str, Any]) -> bool | str:
        pos = position(event)
        uuid = event.get("message_uuid")
        marks = meta.get("marks")
        if pos is None or not isinstance(uuid, str) or not uuid or marks is None:
            return True
        dimension, rank, label = pos
        key = f"ordering:{meta.get('route', '')}:{uuid}:{dimension}"
        value = json.dumps({"event_id": meta.get("event_id"), "label": label})
        advanced, previous = await marks.advance(key, rank, value)
        if advanced:
            return True
        try:
            prev = json.loads(previous or "{}")
        except ValueError:
            prev = {}
        if prev.get("event_id") is not None and prev.get("event_id") == meta.get("event_id"):
            return True  # this very event, evaluated again after an interruption
        return (
            f"out of order: {prev.get('label', 'a later status')} was already forwarded for"
            f" message {uuid}; {label} does not supersede it"
        )


@hookimpl
def register_filters(register: Any) -> None:
    register("ordering", Ordering)
