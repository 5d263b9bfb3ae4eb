"""The destination kit: what a destination plugin is given and what it returns.

Plugin authors import from here (``from gateway.destination import HTTPDestination, Outcome``);
every name in ``__all__`` is public and documented in docs/plugins.md.

Role: the public contract between the delivery engine and destination types (built-in or
third-party): `Outcome`, `Services`, the HTTP helpers, payload shapes and template helpers.
May import the store's records and the leaves (errors, units, clock); never the engine.
"""

from __future__ import annotations

from gateway.destination.base import (
    BatchDestination,
    Batching,
    Closable,
    Destination,
    Outcome,
    OutcomeKind,
    Services,
)
from gateway.destination.http import parse_retry_after, read_capped
from gateway.destination.http_destination import Answer, HTTPDestination
from gateway.destination.payload import (
    JsonTemplate,
    JsonTree,
    envelope_text,
    json_body,
    original_body,
)
from gateway.destination.templates import (
    TemplateTree,
    compile_template,
    environment,
    isotime,
    render_error,
    template_context,
)
from gateway.store.marks import Marks

__all__ = [
    "Answer",
    "BatchDestination",
    "Batching",
    "Closable",
    "Destination",
    "HTTPDestination",
    "JsonTemplate",
    "JsonTree",
    "Marks",
    "Outcome",
    "OutcomeKind",
    "Services",
    "TemplateTree",
    "compile_template",
    "envelope_text",
    "environment",
    "isotime",
    "json_body",
    "original_body",
    "parse_retry_after",
    "read_capped",
    "render_error",
    "template_context",
]
