"""The plugin chain: global hooks, then every route in order, for one event.

Order for one event (``docs/plugins.md`` has the user-facing version):

1. every ``filter_event`` hook; one returning ``False`` drops the event (state ``filtered``);
2. every ``enrich_event`` hook, each seeing the enrichment of those before it; the dicts merge
   into the *global enrichment*;
3. every route in order: ``match`` and ``when`` over the provider's fields plus the global
   enrichment; on a match the route's ``enrich`` list (each enricher seeing what earlier ones
   added), then its ``filter`` list, then the ordering filter unless the route says
   ``ordering: false``; a route whose filters keep the event yields one `Target` per
   destination in ``to``. Every matching route fires (fan-out); ``stop: true`` ends evaluation
   after a route that matched (even if its filters then dropped the event).

A plugin, enricher or filter that raises surfaces as `PluginError` naming it; the router holds the
event and tries again later. Nothing here sends anything; the only side effect is the ordering
filter's marks, and a dry run (or a chain without a store) keeps even those in memory.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.conditions.expressions import ExpressionError, compile_when, evaluate_when
from gateway.conditions.match import Matcher, MatchSpecError, compile_match
from gateway.errors import ConfigError, PluginError
from gateway.plugin.hooks import call_hook_traced
from gateway.plugin.manager import await_me_maybe
from gateway.store.marks import Marks

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.clock import Clock
    from gateway.config.loaded import Loaded
    from gateway.store.base import Store

#: The filter applied to every route unless the route says ``ordering: false``.
ORDERING = "ordering"


@dataclass
class Target:
    route: str
    destination: str
    enrichment: dict[str, Any]


@dataclass
class Step:
    """One line of the trace `explain` renders.

    stage: ``filter_event``, ``enrich_event``, ``match`` (route did not match), ``when`` (its
    expression did not hold), ``route`` (route matched), ``enrich``, ``filter``, ``target``,
    ``stop``. `ok` is whether the event got through this step.
    """

    stage: str
    name: str
    ok: bool
    detail: str = ""
    route: str | None = None
    added: dict[str, Any] | None = None


@dataclass
class Decision:
    #: ``routed`` (at least one target), ``unmatched`` (no route matched) or ``filtered``
    #: (dropped by a ``filter_event`` hook, or every matching route's filters dropped it).
    state: str
    targets: list[Target] = field(default_factory=list)
    #: Why filtered or unmatched; for ``routed``, the routes that suppressed it and why (or None).
    reason: str | None = None
    trace: list[Step] = field(default_factory=list)
    #: What ``enrich_event`` hooks added (also part of every target's enrichment).
    enrichment: dict[str, Any] = field(default_factory=dict)


@dataclass
class Component:
    """A filter or enricher instance, with the names used in errors and traces."""

    name: str
    component: str
    plugin: str
    instance: Any

    @property
    def label(self) -> str:
        return f"{self.name} ({self.plugin})"


@dataclass
class CompiledRoute:
    name: str
    matcher: Matcher
    when: Callable[..., Any] | None
    when_source: str | None
    enrichers: list[Component]
    filters: list[Component]
    to: list[str]
    stop: bool


def _instantiate(cls: Any, options: Any) -> Any:
    """``cls(options)``, or ``cls()`` for a component whose constructor takes no arguments."""
    try:
        params = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        params = [None]  # type: ignore[list-item]
    return cls(options) if params else cls()


def _json_safe(kind: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{kind} returned data that is not JSON-serializable: {e}") from None


class Chain:
    """Evaluates events against one loaded configuration. Build once per configuration."""

    def __init__(self, loaded: Loaded, store: Store | None, clock: Clock) -> None:
        self.loaded = loaded
        self.pm = loaded.pm
        self.store = store
        self.clock = clock
        #: Dry-run mark writes, kept across calls so `explain` of a batch shows ordering.
        self._overlay: dict[str, tuple[str, str] | None] = {}
        #: Component calls (route enrichers and filters) go to pluggy's tracer too, which
        #: writes only when tracing is on (``CALLBACK_GATEWAY_TRACE_PLUGINS``).
        self._tracer = self.pm.trace.root.get("component")
        problems: list[str] = []
        self.components: dict[str, dict[str, Component]] = {
            kind: self._build(kind, problems) for kind in ("filters", "enrichers")
        }
        self.routes = [self._compile(i, r, problems) for i, r in enumerate(loaded.config.routes)]
        #: Destinations with ``enabled: false``: routes to them yield no target.
        self.disabled = {n for n, d in loaded.config.destinations.items() if not d.enabled}
        if problems:
            raise ConfigError(problems)

    # -- construction ---------------------------------------------------------------------
    def _build(self, kind: str, problems: list[str]) -> dict[str, Component]:
        out = {}
        for name, (comp_name, options) in self.loaded.instances.get(kind, {}).items():
            reg = self.loaded.registry.kinds[kind][comp_name]
            try:
                instance = _instantiate(reg.component, options)
            except Exception as e:
                problems.append(
                    f"{kind}.{name}: {comp_name} ({reg.plugin}) failed to start:"
                    f" {type(e).__name__}: {e}"
                )
                continue
            out[name] = Component(name, comp_name, reg.plugin, instance)
        return out

    def _ordering(self) -> Component | None:
        """The automatic ordering filter, unless it is not installed or configured off."""
        if ORDERING in self.components["filters"]:
            comp = self.components["filters"][ORDERING]
        elif ORDERING in self.loaded.registry.kinds["filters"]:
            reg = self.loaded.registry.kinds["filters"][ORDERING]
            options = reg.component.Options()
            comp = Component(ORDERING, ORDERING, reg.plugin, _instantiate(reg.component, options))
            self.components["filters"][ORDERING] = comp
        else:
            return None
        if not getattr(getattr(comp.instance, "options", None), "automatic", True):
            return None
        return comp

    def _compile(self, index: int, route: Any, problems: list[str]) -> CompiledRoute:
        name = route.name or f"route-{index}"
        try:
            matcher = compile_match(route.match)
        except MatchSpecError as e:
            problems.extend(f"routes[{index}].match.{k}: {m}" for k, m in e.problems)
            matcher = compile_match({})
        when = None
        if route.when is not None:
            try:
                when = compile_when(route.when)
            except ExpressionError as e:
                problems.append(f"routes[{index}].when: {e}")
        enrichers = [
            self.components["enrichers"][n]
            for n in route.enrich
            if n in self.components["enrichers"]
        ]
        filters = [
            self.components["filters"][n] for n in route.filter if n in self.components["filters"]
        ]
        if getattr(route, "ordering", True) and not any(f.component == ORDERING for f in filters):
            ordering = self._ordering()
            if ordering is not None:
                filters.append(ordering)
        to = list(dict.fromkeys(route.to))
        return CompiledRoute(name, matcher, when, route.when, enrichers, filters, to, route.stop)

    # -- evaluation -----------------------------------------------------------------------
    def _trace(self, what: str, who: str) -> None:
        self._tracer(what, "->", who)  # formatted only when a writer is set

    async def evaluate(
        self, event: dict[str, Any], meta: dict[str, Any], *, dry_run: bool = False
    ) -> Decision:
        """Run `event` (one provider element) through the chain; see the module docstring."""
        trace: list[Step] = []
        meta = dict(meta)
        # A `json` source may carry non-object elements: routes then see no fields.
        event = dict(event) if isinstance(event, dict) else {}
        verdicts, call = await call_hook_traced(
            self.pm.hook.filter_event, event=dict(event), meta=meta
        )
        for plugin, result in call.returned:
            trace.append(
                Step(
                    "filter_event",
                    plugin,
                    result is not False,
                    "returned False" if result is False else "kept" if result else "abstained",
                )
            )
        if any(v is False for v in verdicts):
            droppers = [p for p, r in call.returned if r is False] or ["a filter_event wrapper"]
            dropped_by = f"dropped by filter_event of plugin {droppers[0]!r}"
            return Decision("filtered", [], dropped_by, trace)

        enrichment = await self._enrich_event(event, meta, trace)
        dry = dry_run or self.store is None
        marks = Marks(self.store, self.clock, dry_run=dry, overlay=self._overlay if dry else None)
        targets: list[Target] = []
        disabled: set[str] = set()
        suppressed: list[str] = []
        matched = 0
        for route in self.routes:
            view = {**event, **enrichment}
            if not self._matches(route, view, meta, trace):
                continue
            matched += 1
            cmeta = {**meta, "route": route.name, "dry_run": dry, "marks": marks}
            route_enrichment = await self._route_enrich(route, view, cmeta, trace)
            dropped = await self._route_filter(route, {**view, **route_enrichment}, cmeta, trace)
            if dropped is not None:
                suppressed.append(f"route {route.name!r}: {dropped}")
            else:
                for dest in route.to:
                    if dest in self.disabled:
                        disabled.add(dest)
                        trace.append(Step("target", dest, False, "enabled: false", route.name))
                        continue
                    targets.append(Target(route.name, dest, {**enrichment, **route_enrichment}))
                    trace.append(Step("target", dest, True, "", route.name))
            if route.stop:
                trace.append(
                    Step("stop", route.name, True, "stop: true ends evaluation", route.name)
                )
                break
        reason = "; ".join(suppressed) or None
        if targets:
            return Decision("routed", targets, reason, trace, enrichment)
        if disabled:
            names = ", ".join(sorted(disabled))
            why = f"matching routes lead only to disabled destinations: {names}"
            return Decision("unmatched", [], why, trace, enrichment)
        if matched:
            return Decision("filtered", [], reason, trace, enrichment)
        n = len(self.routes)
        why = "no routes are configured" if n == 0 else f"none of {n} route(s) matched"
        return Decision("unmatched", [], why, trace, enrichment)

    async def _enrich_event(
        self, event: dict[str, Any], meta: dict[str, Any], trace: list[Step]
    ) -> dict[str, Any]:
        # One pluggy call. Each implementation's dict is merged into the event the next one
        # receives, so later implementations (pluggy order) see what earlier ones added;
        # wrappers see, and may replace, the list of results that makes the enrichment.
        seen = dict(event)

        def merge(plugin: str, added: Any) -> None:
            if added is not None and not isinstance(added, dict):
                raise TypeError(f"enrich_event returned {type(added).__name__}, not a dict")
            _json_safe("enrich_event", added)
            seen.update(added or {})
            trace.append(Step("enrich_event", plugin, True, "", None, dict(added or {})))

        results, _ = await call_hook_traced(
            self.pm.hook.enrich_event, on_result=merge, event=seen, meta=dict(meta)
        )
        enrichment: dict[str, Any] = {}
        for added in results:
            if not isinstance(added, dict):
                raise PluginError(
                    "a enrich_event wrapper", TypeError(f"{type(added).__name__} is not a dict")
                )
            enrichment.update(added)
        return enrichment

    def _matches(
        self, route: CompiledRoute, view: dict[str, Any], meta: dict[str, Any], trace: list[Step]
    ) -> bool:
        why = route.matcher.check(view)
        if why is not None:
            trace.append(Step("match", route.name, False, why, route.name))
            return False
        if route.when is not None:
            holds, error = evaluate_when(route.when, view, meta)
            if not holds:
                detail = f"when {route.when_source!r} " + (
                    f"failed: {error}" if error else "is false"
                )
                trace.append(Step("when", route.name, False, detail, route.name))
                return False
        parts = []
        if route.matcher:
            parts.append("match " + ", ".join(f"{k}: {v!r}" for k, v in route.matcher.spec.items()))
        if route.when_source is not None:
            parts.append(f"when {route.when_source!r}")
        detail = " and ".join(parts) if parts else "no conditions: matches every event"
        trace.append(Step("route", route.name, True, detail, route.name))
        return True

    async def _route_enrich(
        self, route: CompiledRoute, view: dict[str, Any], cmeta: dict[str, Any], trace: list[Step]
    ) -> dict[str, Any]:
        added_all: dict[str, Any] = {}
        for comp in route.enrichers:
            self._trace(f"route {route.name}: enrich", comp.label)
            try:
                added = await await_me_maybe(comp.instance.enrich({**view, **added_all}, cmeta))
                if added is not None and not isinstance(added, dict):
                    raise TypeError(f"enrich() returned {type(added).__name__}, not a dict")
                _json_safe("enrich()", added)
            except Exception as e:
                raise PluginError(comp.label, e) from e
            added_all.update(added or {})
            trace.append(Step("enrich", comp.name, True, "", route.name, dict(added or {})))
        return added_all

    async def _route_filter(
        self, route: CompiledRoute, view: dict[str, Any], cmeta: dict[str, Any], trace: list[Step]
    ) -> str | None:
        """None when every filter keeps the event, else why one dropped it."""
        for comp in route.filters:
            self._trace(f"route {route.name}: filter", comp.label)
            try:
                result = await await_me_maybe(comp.instance.keep(view, cmeta))
            except Exception as e:
                raise PluginError(comp.label, e) from e
            if result is False or isinstance(result, str):
                why = result if isinstance(result, str) else "returned False"
                trace.append(Step("filter", comp.name, False, why, route.name))
                return f"filter {comp.name!r}: {why}"
            trace.append(Step("filter", comp.name, True, "kept", route.name))
        return None
