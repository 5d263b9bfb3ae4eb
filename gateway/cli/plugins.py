"""``callback-gateway plugins``: every loaded plugin, where it came from and what it provides.

`plugins_info` gives the data (one dict per plugin, for ``--json``); `plugins_report` renders it.
Origins: ``built-in`` (an entry point of callback-gateway itself), ``entry point`` (another
installed distribution), ``config`` (a module named under ``plugins:``), ``registered`` (an
object registered in code, as tests do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.plugin.components import KINDS

if TYPE_CHECKING:
    from gateway.config.loaded import Loaded

SELF_DIST = "callback-gateway"


def plugins_info(loaded: Loaded) -> list[dict[str, Any]]:
    """``[{name, version, origin, distribution, module, hooks, provides}]`` in name order;
    `provides` maps a component kind (``filters``...) to the names this plugin registered."""
    pm = loaded.pm
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    configured = set(loaded.config.plugins) if loaded.config is not None else set()
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        dist_name = getattr(dist, "project_name", None) or (
            dist.metadata["Name"] if dist is not None else None
        )
        version = getattr(dist, "version", None)
        if dist is not None:
            origin = "built-in" if _same(dist_name, SELF_DIST) else "entry point"
        elif name in configured:
            origin = "config"
            version = _module_version(plugin)
        else:
            origin = "registered"
            version = _module_version(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        provides = (
            {
                kind: sorted(
                    r.name for r in loaded.registry.kinds[kind].values() if r.plugin == name
                )
                for kind in KINDS
            }
            if loaded.registry is not None
            else {}
        )
        out.append(
            {
                "name": name,
                "version": version,
                "origin": origin,
                "distribution": dist_name,
                "module": getattr(plugin, "__name__", type(plugin).__qualname__),
                "hooks": hooks,
                "provides": {k: v for k, v in provides.items() if v},
            }
        )
    return sorted(out, key=lambda p: (p["origin"] != "built-in", p["name"]))


def _same(a: str | None, b: str) -> bool:
    norm = lambda s: (s or "").lower().replace("_", "-")  # noqa: E731
    return norm(a) == norm(b)


def _module_version(plugin: Any) -> str | None:
    version = getattr(plugin, "__version__", None)
    return str(version) if version is not None else None


def plugins_report(loaded: Loaded) -> str:
    """Readable text: one block per plugin."""
    lines = []
    for p in plugins_info(loaded):
        where = p["origin"]
        if p["distribution"]:
            where += f", from {p['distribution']}"
        lines.append(f"{p['name']} {p['version'] or '(no version)'}  [{where}]")
        lines.append(f"  {'module:':<16}{p['module']}")
        lines.append(f"  {'hooks:':<16}{', '.join(p['hooks']) or '(none)'}")
        for kind, names in p["provides"].items():
            label = kind.replace("_", " ") + ":"
            lines.append(f"  {label:<16}{', '.join(names)}")
    if not lines:
        return "no plugins loaded\n"
    return "\n".join(lines) + "\n"
