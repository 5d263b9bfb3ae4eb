"""Named components that plugins register, and the contracts they implement.

Four kinds, one registry each: source formats, filters, enrichers, destination types. A
component is a class with an ``Options`` pydantic model; the gateway validates the YAML options
with that model (so ``check`` covers plugin options) and instantiates the class with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict

from gateway.errors import ConfigError, PluginError
from gateway.plugin.hooks import call_hook_sync, current_plugin

KINDS = ("source_formats", "filters", "enrichers", "destinations")


class NoOptions(BaseModel):
    """Options model for components that take none."""

    model_config = ConfigDict(extra="forbid")


class SourceFormat(Protocol):
    """Understands one kind of callback body. Instances are created per source.

    ``check`` and ``dedupe_key`` run on the request path: they must be fast and do no I/O.
    """

    Options: ClassVar[type[BaseModel]]

    def check(self, element: Any) -> list[str]:
        """Problems with one element (empty when valid). Unknown fields are not problems."""
        ...

    def dedupe_key(self, element: Any, raw: str, headers: Mapping[str, str], index: int) -> str:
        """A key equal for resends of the same event; `raw` is the element's JSON text."""
        ...

    def describe(self, element: Any) -> tuple[str | None, str | None]:
        """(message_uuid, event name) for listings and metrics; None where unknown."""
        ...


class Filter(Protocol):
    Options: ClassVar[type[BaseModel]]

    def keep(self, event: dict[str, Any], meta: dict[str, Any]) -> bool | str:
        """True to keep; False or a reason string to drop. May be async."""
        ...


class Enricher(Protocol):
    Options: ClassVar[type[BaseModel]]

    def enrich(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
        """Fields to merge into the event's enrichment. May be async."""
        ...


@dataclass
class Registration:
    name: str
    component: Any
    plugin: str


@dataclass
class Registry:
    """Every registered component by kind and name, with the plugin that registered it."""

    kinds: dict[str, dict[str, Registration]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    def get(self, kind: str, name: str) -> Any:
        return self.kinds[kind][name].component

    def names(self, kind: str) -> list[str]:
        return sorted(self.kinds[kind])


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every ``register_*`` hook through pluggy; a name registered twice is an error naming
    both plugins, a component without an ``Options`` model an error naming its plugin."""
    registry = Registry()
    problems: list[str] = []
    for kind in KINDS:

        def register(name: str, component: Any, _kind: str = kind) -> None:
            plugin = current_plugin() or "?"
            table = registry.kinds[_kind]
            if name in table:
                problems.append(
                    f"plugins: {_kind[:-1].replace('_', ' ')} {name!r} is registered by both"
                    f" {table[name].plugin!r} and {plugin!r}"
                )
                return
            if not isinstance(getattr(component, "Options", None), type):
                problems.append(f"plugins: {plugin!r} registered {name!r} without an Options model")
                return
            table[name] = Registration(name, component, plugin)

        try:
            call_hook_sync(getattr(pm.hook, f"register_{kind}"), register=register)
        except PluginError as e:
            problems.append(f"plugins: {e}")
    if problems:
        raise ConfigError(problems)
    return registry
