"""Splitting a request body into elements while keeping each element's exact JSON text.

The provider's bytes are what a downstream receiver expects (``payload: original``), so each
element is stored as the slice of the body it came from, not as re-serialised JSON.
"""

from __future__ import annotations

import json
from typing import Any

_decoder = json.JSONDecoder()
_WS = " \t\n\r"


class BodyError(ValueError):
    """The body is not acceptable JSON; the message is safe to show the sender."""

    def __init__(self, message: str, code: str = "malformed_json") -> None:
        super().__init__(message)
        self.code = code


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def split_elements(body: bytes) -> list[tuple[Any, str]]:
    """``[(value, raw_text), ...]`` for a JSON array body, or one pair for a bare object.

    Raises `BodyError` for an empty body, invalid UTF-8, malformed JSON, or a top level that is
    neither an array nor an object.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(f"body is not valid UTF-8 at byte {e.start}", "invalid_encoding") from None
    text = text.removeprefix("\ufeff")
    i = _skip(text, 0)
    if i == len(text):
        raise BodyError("body is empty; expected a JSON array of events", "empty_body")
    try:
        if text[i] != "[":
            value, end = _decoder.raw_decode(text, i)
            if not isinstance(value, dict):
                raise BodyError("expected a JSON array of event objects (or one object)")
            if _skip(text, end) != len(text):
                raise BodyError(f"unexpected data after the JSON value at char {end}")
            return [(value, text[i:end])]
        out: list[tuple[Any, str]] = []
        i = _skip(text, i + 1)
        if i < len(text) and text[i] == "]":
            i += 1
        else:
            while True:
                start = i
                value, i = _decoder.raw_decode(text, start)
                out.append((value, text[start:i]))
                i = _skip(text, i)
                if i < len(text) and text[i] == ",":
                    i = _skip(text, i + 1)
                    continue
                if i < len(text) and text[i] == "]":
                    i += 1
                    break
                raise BodyError(f"malformed JSON: expected ',' or ']' at char {i}")
        if _skip(text, i) != len(text):
            raise BodyError(f"unexpected data after the JSON array at char {i}")
        return out
    except json.JSONDecodeError as e:
        raise BodyError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BodyError("malformed JSON: nested too deeply") from None
