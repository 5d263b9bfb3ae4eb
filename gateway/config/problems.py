"""Turning validation errors into the one-line problems ``check`` prints, with key paths and
"did you mean" hints."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.config.paths import format_loc
from gateway.config.redact import is_secret_key, redact_url


def pydantic_problems(
    e: ValidationError, model: type[BaseModel], tree: Any, prefix: str = ""
) -> list[str]:
    out = []
    for err in e.errors(include_url=False):
        loc = err["loc"]
        path = format_loc(loc, prefix)
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(model, loc[:-1])
            hint = suggest(str(loc[-1]), allowed)
            out.append(f"{path}: unknown key{hint}")
        elif err["type"] == "missing":
            out.append(f"{path}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            found = err.get("input")
            shown = "" if isinstance(found, dict | list) or found is None else f" (found {found!r})"
            if any(is_secret_key(part) or part == "headers" for part in loc):
                shown = ""  # never echo a secret, even a malformed one
            out.append(f"{path}: {msg}{redact_url(shown)}")
    return out


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or a list of valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if choices and len(choices) <= 12:
        return f" (expected one of: {', '.join(choices)})"
    return ""


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by walking `loc` from `model` (best effort)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _step(tp: Any, part: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _step(typing.get_args(tp)[0], part)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                found = _step(arg, part)
                if found is not None:
                    return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(str(part))
        return f.annotation if f else None
    if origin in (dict, list):
        return typing.get_args(tp)[-1]
    return None
