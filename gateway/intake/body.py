"""Splitting a request body into elements while keeping each element's exact JSON text.

The provider's bytes are what a downstream receiver expects (``payload: original``), so each
element is stored as the slice of the body it came from, not as re-serialised JSON.

The parser is strict JSON (RFC 8259, with I-JSON's (RFC 7493) rules on numbers and strings), so
that every stored slice is JSON any receiver accepts:

- ``NaN``, ``Infinity`` and ``-Infinity`` are malformed, and so is a number that does not fit a
  double (``1e400``, an integer of 5,000 digits);
- a string escape that leaves a lone surrogate (``"\\ud800"``) is malformed;
- an object with a key twice is *not* malformed (the syntax allows it) but ambiguous: the element
  is returned with the repeated keys in `Elements.duplicates`, and intake treats it as invalid.

Each of these raises `BodyError` (400) for the whole body, so nothing of it is stored.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

#: Only a body with an escape of a UTF-16 surrogate (``\\ud800`` to ``\\udfff``) needs its strings
#: checked for lone surrogates after parsing; other bodies skip that walk.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_MAX_INT = int(sys.float_info.max)
_MAX_DIGITS = len(str(_MAX_INT))


class BodyError(ValueError):
    """The body is not acceptable JSON; the message is safe to show the sender.

    `status` is the HTTP status intake answers with (400, or 413 for too many elements).
    """

    def __init__(self, message: str, code: str = "malformed_json", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class _Refused(ValueError):
    """Raised from inside the decoder for a value strict JSON does not allow."""


class Elements(list[tuple[Any, str]]):
    """``[(value, raw_text), ...]``; `duplicates` maps the index of each element that repeats a
    key inside one of its objects to those keys (in the order they repeat)."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: dict[int, list[str]] = {}


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _integer(text: str) -> int:
    if len(text) < _MAX_DIGITS:  # fewer digits than the largest double: it fits
        return int(text)
    digits = len(text) - text.startswith("-")
    if digits > _MAX_DIGITS or abs(value := int(text)) > _MAX_INT:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({digits} digits)"
        raise _Refused(f"the number {shown} does not fit a double")
    return value


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise _Refused(f"the number {shown} does not fit a double")
    return value


#: Keys repeated inside the element being decoded (see `_pairs`); one parse at a time, as
#: intake runs on one event-loop thread per process.
_repeated: list[str] = []


def _pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(items)
    if len(obj) != len(items):
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                _repeated.append(key)
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(
    parse_constant=_constant, parse_int=_integer, parse_float=_float, object_pairs_hook=_pairs
)
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__


def _lone_surrogate(value: Any) -> bool:
    """True when a string (or key) anywhere in `value` is not encodable as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    return _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]  # '*' always matches


def _scan(text: str, start: int) -> tuple[Any, int]:
    """The C scanner without `JSONDecoder.raw_decode`'s Python wrapper (one call per element)."""
    try:
        return _scan_once(text, start)  # type: ignore[no-any-return]
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", text, e.value) from None


def split_elements(body: bytes, max_events: int | None = None) -> Elements:
    """The elements of a JSON array body, or one element for a bare object (see `Elements`).

    Raises `BodyError` for an empty body, invalid UTF-8, malformed or non-strict JSON (see the
    module docstring), a top level that is neither an array nor an object, and (status 413)
    more than `max_events` elements; parsing stops at the first element over the limit.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(f"body is not valid UTF-8 at byte {e.start}", "invalid_encoding") from None
    text = text.removeprefix("\ufeff")
    i = _skip(text, 0)
    if i == len(text):
        raise BodyError("body is empty; expected a JSON array of events", "empty_body")
    careful = _SURROGATE.search(text) is not None
    repeated = _repeated
    repeated.clear()
    out = Elements()

    def take(start: int) -> int:
        value, end = _scan(text, start)
        if careful and _lone_surrogate(value):
            raise _Refused("a string holds a lone UTF-16 surrogate escape")
        if repeated:
            out.duplicates[len(out)] = list(dict.fromkeys(repeated))
            repeated.clear()
        out.append((value, text[start:end]))
        return end

    try:
        if text[i] != "[":
            end = take(i)
            if not isinstance(out[0][0], dict):
                raise BodyError("expected a JSON array of event objects (or one object)")
            if _skip(text, end) != len(text):
                raise BodyError(f"unexpected data after the JSON value at char {end}")
            return out
        i = _skip(text, i + 1)
        if i < len(text) and text[i] == "]":
            i += 1
        else:
            while True:
                if max_events is not None and len(out) >= max_events:
                    raise BodyError(
                        f"the body holds more than {max_events} elements (the source's"
                        " max_events); send them in smaller batches",
                        "too_many_events",
                        413,
                    )
                i = _skip(text, take(i))
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
    except _Refused as e:
        raise BodyError(f"malformed JSON: {e}") from None
    except RecursionError:
        raise BodyError("malformed JSON: nested too deeply") from None


def parse_element(raw: str) -> tuple[Any, list[str]]:
    """One stored element's value and the problems strict parsing finds in it (its repeated
    keys, see `duplicate_problems`). Raises `BodyError` when `raw` is not strict JSON."""
    repeated = _repeated
    repeated.clear()
    careful = _SURROGATE.search(raw) is not None
    try:
        value, end = _scan(raw, _skip(raw, 0))
        if careful and _lone_surrogate(value):
            raise _Refused("a string holds a lone UTF-16 surrogate escape")
    except json.JSONDecodeError as e:
        raise BodyError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise BodyError(f"malformed JSON: {e}") from None
    if _skip(raw, end) != len(raw):
        raise BodyError(f"unexpected data after the JSON value at char {end}")
    return value, duplicate_problems(list(dict.fromkeys(repeated)))


def duplicate_problems(keys: list[str]) -> list[str]:
    """The validation problems for an element that repeats `keys`."""
    return [f"duplicate key {key!r}: the element is ambiguous" for key in keys]
