"""Config checks that depend on plugins: format/type names, their options, route references.

Runs on the interpolated tree (not only the validated model) so that problems here are reported
together with schema problems elsewhere in the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from gateway.config.models import DeliveryConfig, DestinationConfig
from gateway.config.problems import pydantic_problems, suggest
from gateway.plugin.components import Registry

if TYPE_CHECKING:
    from gateway.config.loaded import Loaded
    from gateway.config.models import Config

_COMMON_DESTINATION_KEYS = set(DestinationConfig.model_fields)


def check_components(
    tree: dict[str, Any],
    config: Config | None,
    registry: Registry,
    loaded: Loaded,
    problems: list[str],
) -> None:
    """Append a problem for every unknown component name or invalid component option."""

    def validate(model: type[BaseModel], options: Any, path: str) -> BaseModel | None:
        try:
            return model.model_validate(options)
        except ValidationError as e:
            problems.extend(pydantic_problems(e, model, options, prefix=path))
            return None

    sources = _mapping(tree, "sources")
    for name, src in sources.items():
        if not isinstance(src, dict):
            continue
        fmt = src.get("format", "revicom")
        if fmt not in registry.kinds["source_formats"]:
            problems.append(
                f"sources.{name}.format: unknown format {fmt!r}"
                + suggest(str(fmt), registry.names("source_formats"))
            )
            continue
        component = registry.get("source_formats", fmt)
        opts = validate(component.Options, src.get("options") or {}, f"sources.{name}.options")
        if opts is not None:
            loaded.source_options[name] = opts

    destinations = _mapping(tree, "destinations")
    lease = _lease(tree, config)
    for name, dest in destinations.items():
        if not isinstance(dest, dict) or "type" not in dest:
            continue
        kind = dest["type"]
        if kind not in registry.kinds["destinations"]:
            problems.append(
                f"destinations.{name}.type: unknown destination type {kind!r}"
                + suggest(str(kind), registry.names("destinations"))
            )
            continue
        component = registry.get("destinations", kind)
        options = {k: v for k, v in dest.items() if k not in _COMMON_DESTINATION_KEYS}
        opts = validate(component.Options, options, f"destinations.{name}")
        if opts is not None:
            loaded.destination_options[name] = opts
            timeout = getattr(opts, "timeout", None)
            if lease is not None and isinstance(timeout, int | float) and timeout >= lease:
                problems.append(
                    f"destinations.{name}.timeout: {timeout:g}s must be shorter than"
                    f" delivery.lease ({lease:g}s), or another worker could"
                    " take the delivery over while it is still being sent"
                )

    for kind in ("filters", "enrichers"):
        loaded.instances[kind] = {}
        section = _mapping(tree, kind)
        for name, spec in section.items():
            spec = dict(spec or {}) if isinstance(spec, dict) else {}
            comp_name = spec.pop("type", name)
            if comp_name not in registry.kinds[kind]:
                problems.append(
                    f"{kind}.{name}.type: unknown {kind[:-1]} {comp_name!r}"
                    + suggest(str(comp_name), registry.names(kind))
                )
                continue
            opts = validate(registry.get(kind, comp_name).Options, spec, f"{kind}.{name}")
            if opts is not None:
                loaded.instances[kind][name] = (comp_name, opts)

    routes = tree.get("routes")
    if not isinstance(routes, list):
        routes = []
    names: set[str] = set()
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        rname = route.get("name")
        if rname is not None:
            if rname in names:
                problems.append(f"routes[{i}].name: {rname!r} is used by another route")
            names.add(rname)
        for key, kind in (("to", None), ("enrich", "enrichers"), ("filter", "filters")):
            refs = route.get(key) or []
            refs = [refs] if isinstance(refs, str) else refs
            if not isinstance(refs, list):
                continue
            for j, ref in enumerate(refs):
                if kind is None:
                    if ref not in destinations:
                        problems.append(
                            f"routes[{i}].to[{j}]: no destination named {ref!r}"
                            + suggest(str(ref), destinations)
                        )
                    continue
                if ref in loaded.instances[kind]:
                    continue
                if ref not in registry.kinds[kind]:
                    problems.append(
                        f"routes[{i}].{key}[{j}]: unknown {kind[:-1]} {ref!r}"
                        + suggest(str(ref), set(registry.names(kind)) | set(loaded.instances[kind]))
                    )
                    continue
                opts = validate(registry.get(kind, ref).Options, {}, f"{kind}.{ref}")
                if opts is not None:
                    loaded.instances[kind][ref] = (ref, opts)


def _mapping(tree: dict[str, Any], key: str) -> dict[Any, Any]:
    """``tree[key]`` when it is a mapping, else an empty one (schema problems show elsewhere)."""
    value = tree.get(key)
    return value if isinstance(value, dict) else {}


def _lease(tree: dict[str, Any], config: Config | None) -> float | None:
    """The configured lease, also when an unrelated part of the file failed validation."""
    if config is not None:
        return config.delivery.lease
    try:
        return DeliveryConfig.model_validate(tree.get("delivery") or {}).lease
    except ValidationError:
        return None
