"""The ``revicom`` source format: the provider's callback contract (contract/CALLBACKS.md).

Validates each element against the fields its ``callback_event`` requires (types only; unknown
fields are kept) and derives the dedupe key the contract prescribes, since the provider sends no
event id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway import hookimpl
from gateway.plugin.components import NoOptions

STR, INT, NUM, TIME, OBJ = "string", "integer", "number", "time", "object"

COMMON_REQUIRED = {"message_uuid": STR, "channel_type": STR, "callback_event": STR}
COMMON_OPTIONAL = {"cascade_message_uuid": STR, "cascade_step": INT}
STATUS_FIELDS = ({"status": STR, "status_time": TIME}, {"error_code": INT})

#: callback_event -> (required fields, optional fields)
EVENTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "delivered": STATUS_FIELDS,
    "sent": STATUS_FIELDS,
    "read": STATUS_FIELDS,
    "price": ({"price": NUM, "currency": STR, "price_time": TIME}, {"parts": INT}),
    "click": ({"short_url": STR, "click_time": TIME}, {"url": STR}),
    "inbound_sent": ({"status": STR, "status_time": TIME}, {"item": OBJ, "error_code": INT}),
}

#: The fields whose values identify one event (contract: "Dedupe key per event").
DEDUPE_FIELDS = {
    "price": ("message_uuid", "price", "currency", "parts", "price_time"),
    "click": ("message_uuid", "short_url", "click_time"),
    "inbound_sent": ("message_uuid",),
}
STATUS_DEDUPE = ("message_uuid", "callback_event", "status", "status_time")
#: ``json.dumps(..., separators=...)`` builds a new encoder on every call; this is the same
#: encoder (same output, byte for byte) built once, as the key is made for every callback.
_encode_key = json.JSONEncoder(separators=(",", ":")).encode


#: (required, optional) fields per event, common ones included, merged once.
_COMMON_FIELDS = (tuple(COMMON_REQUIRED.items()), tuple(COMMON_OPTIONAL.items()))
_FIELDS = {
    name: (
        tuple({**COMMON_REQUIRED, **required}.items()),
        tuple({**COMMON_OPTIONAL, **optional}.items()),
    )
    for name, (required, optional) in EVENTS.items()
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == OBJ:
        return isinstance(value, dict)
    if kind == TIME:
        if not isinstance(value, str):
            return False
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    raise AssertionError(kind)


def _expect(kind: str) -> str:
    if kind == TIME:
        return "an ISO 8601 time like 2020-10-16T18:51:13Z"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _found(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class RevicomFormat:
    """The provider's JSON callbacks."""

    Options = NoOptions

    def __init__(self, options: NoOptions | None = None) -> None:
        self.options = options

    def check(self, element: Any) -> list[str]:
        if not isinstance(element, dict):
            return [f"expected an object, found {_found(element)}"]
        problems = []
        event = element.get("callback_event")
        required, optional = _COMMON_FIELDS
        if isinstance(event, str):
            if event not in EVENTS:
                problems.append(
                    f"callback_event: unknown event {event!r} (known: {', '.join(EVENTS)})"
                )
            else:
                required, optional = _FIELDS[event]
        for name, kind in required:
            if element.get(name) is None:
                problems.append(f"{name}: required field is missing")
            elif not _type_ok(element[name], kind):
                problems.append(f"{name}: expected {_expect(kind)}, found {_found(element[name])}")
        for name, kind in optional:
            value = element.get(name)
            if value is not None and not _type_ok(value, kind):
                problems.append(f"{name}: expected {_expect(kind)}, found {_found(value)}")
        return problems

    def dedupe_key(self, element: Any, raw: str, headers: Mapping[str, str], index: int) -> str:
        fields = DEDUPE_FIELDS.get(element["callback_event"], STATUS_DEDUPE)
        return _encode_key(["revicom", *(element.get(f) for f in fields)])

    def describe(self, element: Any) -> tuple[str | None, str | None]:
        if not isinstance(element, dict):
            return None, None
        uuid, event = element.get("message_uuid"), element.get("callback_event")
        return (uuid if isinstance(uuid, str) else None, event if isinstance(event, str) else None)


@hookimpl
def register_source_formats(register: Any) -> None:
    register("revicom", RevicomFormat)
