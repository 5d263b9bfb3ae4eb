"""Templates for destinations: one sandboxed Jinja2 environment, compiled with key-path errors.

Every template a destination renders (Slack text and blocks, email subject and body, webhook
bodies, a plugin's own) should come from here, so that all of them run in the same sandbox
(`jinja2.sandbox.ImmutableSandboxedEnvironment`: no attribute access to internals, no mutation
of the event) and report problems the same way::

    from gateway.destination.templates import compile_template, TemplateTree, template_context

    text = compile_template(options.text, "text")          # ValueError names "text" and the line
    blocks = TemplateTree(options.blocks, "blocks")        # every string leaf is a template
    body = text.render(template_context(delivery))

`environment(finalize=..., autoescape=...)` gives an overlay of the shared sandbox for output
rules of a medium (Slack escapes ``&<>``, email HTML autoescapes). Compile at construction (so
``callback-gateway check`` reports syntax errors with their key path); render per delivery.
`render_error` turns whatever a template raises while rendering into one line.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from jinja2 import Template, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.store import DeliveryRecord

_SANDBOX = ImmutableSandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


def environment(
    finalize: Callable[[Any], Any] | None = None, autoescape: bool = False
) -> ImmutableSandboxedEnvironment:
    """The shared sandbox, or an overlay of it with its own `finalize` (applied to every value
    a template prints) and `autoescape` (HTML)."""
    if finalize is None and not autoescape:
        return _SANDBOX
    env: ImmutableSandboxedEnvironment = _SANDBOX.overlay(finalize=finalize, autoescape=autoescape)
    return env


def compile_template(
    source: str, where: str = "template", env: ImmutableSandboxedEnvironment | None = None
) -> Template:
    """`source` compiled in `env` (default: the shared sandbox). A syntax error raises
    `ValueError` saying ``<where>: template syntax error on line N: ...``."""
    try:
        return (env or _SANDBOX).from_string(source)
    except TemplateSyntaxError as e:
        problem = f"template syntax error on line {e.lineno}: {e.message}"
        raise ValueError(f"{where}: {problem}") from None


def render_error(e: Exception) -> str:
    """One line for an exception raised while rendering (sandbox violation, filter error)."""
    return f"template failed: {type(e).__name__}: {e}"


class TemplateTree:
    """A YAML tree (mappings, lists, scalars) whose string leaves are templates.

    Keys are not templates; non-string leaves pass through unchanged. `env_for(node)` may pick
    another environment for the strings directly inside a mapping (Slack renders
    ``{"type": "plain_text", ...}`` objects without escaping), and `keep` lists keys whose
    values are never templates (such as ``type``). A syntax error raises `ValueError` naming the
    leaf's key path (``blocks[2].text.text``).
    """

    def __init__(
        self,
        tree: Any,
        where: str = "",
        env: ImmutableSandboxedEnvironment | None = None,
        *,
        env_for: Callable[[dict[str, Any]], ImmutableSandboxedEnvironment | None] | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> None:
        self._env_for = env_for
        self._keep = keep
        self.tree = self._compile(tree, where, env or _SANDBOX)

    def _compile(self, node: Any, where: str, env: ImmutableSandboxedEnvironment) -> Any:
        if isinstance(node, str):
            return compile_template(node, where or "template", env)
        if isinstance(node, list):
            return [self._compile(v, f"{where}[{i}]", env) for i, v in enumerate(node)]
        if isinstance(node, dict):
            inner = (self._env_for(node) if self._env_for else None) or env
            return {
                k: v if k in self._keep else self._compile(v, f"{where}.{k}" if where else k, inner)
                for k, v in node.items()
            }
        return node

    def render(self, context: dict[str, Any]) -> Any:
        """The tree with every template rendered to a string (exceptions propagate)."""
        return _render(self.tree, context)


def _render(node: Any, context: dict[str, Any]) -> Any:
    if isinstance(node, Template):
        return node.render(context)
    if isinstance(node, list):
        return [_render(v, context) for v in node]
    if isinstance(node, dict):
        return {k: _render(v, context) for k, v in node.items()}
    return node


def isotime(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds (``2024-05-01T12:00:00.123Z``)."""
    dt = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def template_context(delivery: DeliveryRecord) -> dict[str, Any]:
    """What every destination template sees: ``event`` (the provider's fields with the
    enrichments merged over them) and ``meta`` (``id``, ``event_id``, ``source``, ``route``,
    ``destination``, ``received_at`` as RFC 3339, ``attempt`` starting at 1)."""
    fields = delivery.event
    event = {**fields, **delivery.enrichment} if isinstance(fields, dict) else fields
    meta = {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "source": delivery.source,
        "route": delivery.route,
        "destination": delivery.destination,
        "received_at": isotime(delivery.received_at),
        "attempt": delivery.attempts + 1,
    }
    return {"event": event, "meta": meta}
