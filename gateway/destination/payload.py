"""What destinations send: the provider's original element, the envelope, or a JSON template.

Shared by the built-in destinations (and usable by plugin destinations) so that every envelope
has one shape (DESIGN "Interface details")::

    {"id": delivery id, "event_id", "source", "route", "received_at",
     "event": {provider fields as received}, "enrichment": {...}}

``received_at`` is RFC 3339 UTC with milliseconds (``2024-05-01T12:00:00.123Z``).
The ``event`` value is the stored element text spliced in unchanged, so numbers and key order
are exactly what the provider sent.
"""

from __future__ import annotations

import json

from gateway.destination.templates import compile_template, isotime, render_error, template_context
from gateway.store import DeliveryRecord


def original_body(delivery: DeliveryRecord) -> bytes:
    """The provider's JSON array holding this one event, byte-for-byte as it sent the element."""
    return ("[" + delivery.raw + "]").encode("utf-8")


def envelope_text(delivery: DeliveryRecord, one_line: bool = False) -> str:
    """The envelope as JSON text. `one_line` removes line breaks between the element's tokens
    (JSON strings cannot contain raw line breaks, so the values are unchanged) for JSON Lines."""
    raw = delivery.raw
    if one_line and ("\n" in raw or "\r" in raw):
        raw = raw.replace("\r", " ").replace("\n", " ")
    head = json.dumps(
        {"id": delivery.id, "event_id": delivery.event_id, "source": delivery.source,
         "route": delivery.route, "received_at": isotime(delivery.received_at)},
        separators=(",", ":"), ensure_ascii=False,
    )
    tail = json.dumps(delivery.enrichment, separators=(",", ":"), ensure_ascii=False)
    return f'{head[:-1]},"event":{raw},"enrichment":{tail}}}'


class JsonTemplate:
    """A sandboxed Jinja2 template that must render valid JSON.

    Construction raises `ValueError` for a syntax error (so ``check`` reports it); `render`
    raises `ValueError` when the output is not JSON or the template fails on an event.
    """

    def __init__(self, source: str) -> None:
        self.template = compile_template(source, "body")

    def render(self, delivery: DeliveryRecord) -> bytes:
        try:
            text = self.template.render(template_context(delivery))
        except Exception as e:  # sandbox violations, undefined attributes, filter errors
            raise ValueError(render_error(e)) from None
        try:
            json.loads(text)
        except ValueError as e:
            raise ValueError(f"template did not render valid JSON: {e}: {text[:200]!r}") from None
        return text.encode("utf-8")


__all__ = ["JsonTemplate", "envelope_text", "isotime", "original_body", "template_context"]
