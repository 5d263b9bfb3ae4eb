"""The ``json`` source format: any JSON poster (an array of objects, or one object).

Options (``sources.<name>.options``)::

    dedupe: {pointer: /id}          # a JSON pointer into each element, or
    dedupe: {header: X-Request-Id}  # a request header (plus the element's index), or
    dedupe: {content: true}         # default: elements with identical JSON are the same event
    required: [/id, /type]          # JSON pointers that must be present
    message_uuid: /message_uuid     # where listings find a message id (optional)
    event: /type                    # where listings and metrics find an event name (optional)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway import hookimpl

_MISSING = object()


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """The value at RFC 6901 `pointer` in `doc`, or a sentinel when absent."""
    if pointer == "":
        return doc
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            return _MISSING
    return doc


def _pointer(v: str) -> str:
    if v and not v.startswith("/"):
        raise ValueError("a JSON pointer starts with '/', like /id")
    return v


class DedupeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pointer: str | None = None
    header: str | None = None
    content: bool = False

    @model_validator(mode="after")
    def _one(self) -> DedupeOptions:
        if sum([self.pointer is not None, self.header is not None, self.content]) > 1:
            raise ValueError("give one of pointer, header or content")
        if self.pointer is not None:
            _pointer(self.pointer)
        return self


class JsonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dedupe: DedupeOptions = Field(default_factory=lambda: DedupeOptions(content=True))
    required: list[str] = []
    message_uuid: str | None = None
    event: str | None = None

    @field_validator("required")
    @classmethod
    def _pointers(cls, v: list[str]) -> list[str]:
        return [_pointer(p) for p in v]


class JsonFormat:
    """Generic JSON: no schema beyond `required`, dedupe as configured."""

    Options = JsonOptions

    def __init__(self, options: JsonOptions | None = None) -> None:
        self.options = options or JsonOptions()

    def check(self, element: Any) -> list[str]:
        return [
            f"{p}: required field is missing"
            for p in self.options.required
            if resolve_pointer(element, p) in (_MISSING, None)
        ]

    def dedupe_key(self, element: Any, raw: str, headers: Mapping[str, str], index: int) -> str:
        d = self.options.dedupe
        if d.pointer is not None:
            value = resolve_pointer(element, d.pointer)
            if value is not _MISSING:
                return json.dumps(["pointer", value], separators=(",", ":"), sort_keys=True)
        if d.header is not None:
            value = headers.get(d.header.lower()) or headers.get(d.header)
            if value:
                return json.dumps(["header", value, index], separators=(",", ":"))
        canonical = json.dumps(element, separators=(",", ":"), sort_keys=True)
        return "content:" + hashlib.sha256(canonical.encode()).hexdigest()

    def describe(self, element: Any) -> tuple[str | None, str | None]:
        out: list[str | None] = []
        for p in (self.options.message_uuid, self.options.event):
            v = resolve_pointer(element, p) if p else _MISSING
            out.append(str(v) if v is not _MISSING and v is not None else None)
        return out[0], out[1]


@hookimpl
def register_source_formats(register: Any) -> None:
    register("json", JsonFormat)
