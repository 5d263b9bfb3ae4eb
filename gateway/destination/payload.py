"""What destinations send: the provider's original element, the envelope, or a JSON body built
from templates (`json_body`: a `JsonTree` from a YAML mapping, or a `JsonTemplate` string).

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
import re
from typing import Any

from jinja2 import Template, TemplateSyntaxError, Undefined
from markupsafe import Markup

from gateway.destination.templates import (
    compile_template,
    environment,
    isotime,
    render_error,
    template_context,
)
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
        {
            "id": delivery.id,
            "event_id": delivery.event_id,
            "source": delivery.source,
            "route": delivery.route,
            "received_at": isotime(delivery.received_at),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    tail = json.dumps(delivery.enrichment, separators=(",", ":"), ensure_ascii=False)
    return f'{head[:-1]},"event":{raw},"enrichment":{tail}}}'


def json_text(value: Any) -> str:
    """How a value printed by ``{{ ... }}`` in a string `JsonTemplate` appears: strings escaped
    for the inside of a JSON string (quotes, backslashes, line breaks), ``None``/booleans/numbers
    spelled as JSON, anything else as the escaped text of its JSON. The output of ``tojson``
    (and of ``safe``) is `Markup` and passes unchanged, so ``{{ event.x | tojson }}`` prints a
    complete JSON value. No printed value can end a string or add keys."""
    if isinstance(value, Markup):
        return str(value)
    if isinstance(value, Undefined):
        return ""
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return json.dumps(value, ensure_ascii=False)[1:-1]


_JSON_ENV = environment(finalize=json_text)
#: ``{{ ... }}`` (one expression) or ``{# ... #}``, for the static check of a string body.
_PRINT = re.compile(r"\{\{.*?\}\}|\{#.*?#\}", re.DOTALL)


class JsonTemplate:
    """A template string that must render valid JSON (``payload: template`` with a string
    ``body``). Printed values are escaped by `json_text`; ``tojson`` prints a JSON value.

    Construction raises `ValueError` for a syntax error, and for a template without ``{% %}``
    blocks whose fixed text cannot form JSON whatever its values are (``check`` reports both);
    `render` raises `ValueError` when the output is not JSON or the template fails on an event.
    """

    def __init__(self, source: str, where: str = "body") -> None:
        self.template = compile_template(source, where, _JSON_ENV)
        if "{%" not in source:
            skeleton = _PRINT.sub("0", source)  # 0 is valid inside and outside a JSON string
            try:
                json.loads(skeleton)
            except ValueError as e:
                raise ValueError(f"{where}: does not render valid JSON: {e}") from None

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


#: A string leaf that is exactly one expression keeps the value's JSON type.
_ONE_EXPRESSION = re.compile(r"\s*\{\{(?!-)(.*?)(?<!-)\}\}\s*", re.DOTALL)


class _Expression:
    def __init__(self, source: str, where: str) -> None:
        try:
            self.run = _JSON_ENV.compile_expression(source, undefined_to_none=True)
        except TemplateSyntaxError as e:
            raise ValueError(f"{where}: template syntax error: {e.message}") from None


class JsonTree:
    """A JSON body given as a YAML mapping or list (``payload: template`` with ``body`` as a
    tree): the gateway builds the JSON, so nothing an event holds can change its structure.

    String leaves are templates rendering a JSON string; a leaf that is exactly one expression
    (``"{{ event.price }}"``) keeps the value's type (number, boolean, null, object, array;
    undefined is null); numbers, booleans and null in the YAML pass unchanged. Keys are not
    templates. Syntax errors raise `ValueError` with the leaf's key path (``body.user.name``).
    """

    def __init__(self, tree: dict[str, Any] | list[Any], where: str = "body") -> None:
        self.tree = self._compile(tree, where)

    def _compile(self, node: Any, where: str) -> Any:
        if isinstance(node, str):
            one = _ONE_EXPRESSION.fullmatch(node)
            if one and "{{" not in one[1] and "}}" not in one[1]:
                return _Expression(one[1], where)
            return compile_template(node, where, environment())
        if isinstance(node, list):
            return [self._compile(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, dict):
            return {str(k): self._compile(v, f"{where}.{k}") for k, v in node.items()}
        if node is None or isinstance(node, bool | int | float):
            return node
        raise ValueError(f"{where}: {type(node).__name__} is not a JSON value (quote it)")

    def render(self, delivery: DeliveryRecord) -> bytes:
        try:
            tree = _render(self.tree, template_context(delivery))
            return json.dumps(tree, ensure_ascii=False, allow_nan=False, default=str).encode()
        except Exception as e:  # sandbox violations, filter errors, NaN
            raise ValueError(render_error(e)) from None


def _render(node: Any, context: dict[str, Any]) -> Any:
    if isinstance(node, Template):
        return node.render(context)
    if isinstance(node, _Expression):
        value = node.run(**context)
        return str(value) if isinstance(value, Markup) else value
    if isinstance(node, list):
        return [_render(v, context) for v in node]
    if isinstance(node, dict):
        return {k: _render(v, context) for k, v in node.items()}
    return node


def json_body(
    body: str | dict[str, Any] | list[Any], where: str = "body"
) -> JsonTemplate | JsonTree:
    """The compiled ``body`` of ``payload: template``: a `JsonTemplate` for a string, a
    `JsonTree` for a mapping or list. Both have ``render(delivery) -> bytes``."""
    return JsonTemplate(body, where) if isinstance(body, str) else JsonTree(body, where)


__all__ = [
    "JsonTemplate",
    "JsonTree",
    "envelope_text",
    "isotime",
    "json_body",
    "json_text",
    "original_body",
    "template_context",
]
