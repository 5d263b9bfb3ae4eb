"""Route ``when:`` conditions: sandboxed Jinja2 expressions, compiled once.

An expression sees ``event`` (the provider's fields plus enrichment so far; ``event.status`` and
``event["status"]`` both work) and ``meta`` (``event_id``, ``source``, ``received_at``). A missing
field is undefined, and undefined chains (``event.item.contentType`` is undefined when ``item``
is missing) and is false; comparing it with ``<``/``>=`` fails, which counts as "no match" with
the error shown by ``explain``. The sandbox is immutable: an expression cannot call methods that
change data, nor reach Python internals.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


@cache
def environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=ChainableUndefined)


class ExpressionError(ValueError):
    """The expression does not compile (a syntax error); the message says where."""


def compile_when(source: str) -> Callable[..., Any]:
    """Compile `source`; raise `ExpressionError` with Jinja's message when it does not parse."""
    if not source.strip():
        raise ExpressionError("empty expression")
    try:
        return environment().compile_expression(source)
    except TemplateError as e:
        raise ExpressionError(f"invalid expression: {e}") from None


def evaluate_when(
    compiled: Callable[..., Any], event: dict[str, Any], meta: dict[str, Any]
) -> tuple[bool, str | None]:
    """(holds, error): `error` is the text of a failure while evaluating (counts as false)."""
    try:
        return bool(compiled(event=event, meta=meta)), None
    except Exception as e:  # undefined comparisons, sandbox refusals, type errors
        return False, f"{type(e).__name__}: {e}"
