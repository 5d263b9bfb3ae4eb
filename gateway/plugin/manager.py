"""Building the plugin manager: built-ins and third-party plugins take the same path.

`make_plugin_manager()` is a factory (never a module global): entry points of the group
``callback_gateway`` (built-ins are registered there by our own pyproject), then modules named
under ``plugins:`` in the config (each registered under its module name), then `extra` objects
(tests). ``check_pending()`` makes a misspelled hook implementation fail at startup. Every
registered implementation is bridged for `gateway.plugin.hooks.call_hook` (async
implementations awaited in pluggy's call order). ``CALLBACK_GATEWAY_TRACE_PLUGINS=1`` turns on
pluggy's own tracing (``pm.trace``), written to stderr: every hook call, its arguments and
its result.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pluggy

from gateway import PROJECT, hookspecs
from gateway.errors import ConfigError
from gateway.plugin.hooks import bridge_plugin

#: Set to anything non-empty to trace every hook call on stderr.
TRACE_ENV = "CALLBACK_GATEWAY_TRACE_PLUGINS"


class GatewayPluginManager(pluggy.PluginManager):
    """A `pluggy.PluginManager` whose plugins' implementations are bridged for `call_hook` as
    they are registered, whoever registers them."""

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        if registered is not None:
            bridge_plugin(self, plugin)
        return registered


def make_plugin_manager(
    modules: Iterable[str] = (),
    *,
    entry_points: bool = True,
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """A fresh manager with entry-point plugins, `modules` imported by name, and `extra` objects.

    Raises `ConfigError` (key path ``plugins[i]``) for a module that cannot be imported and for
    hook implementations that match no hook.
    """
    pm = GatewayPluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    problems: list[str] = []
    if entry_points:
        _load_entry_points(pm, problems)
    for i, name in enumerate(modules):
        try:
            module = importlib.import_module(name)
        except Exception as e:  # any import failure is the user's to fix
            problems.append(f"plugins[{i}]: cannot import {name!r}: {type(e).__name__}: {e}")
            continue
        if pm.is_registered(module) or pm.get_plugin(name) is not None:
            continue
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as e:
            problems.append(f"plugins[{i}]: {e}")
    for obj in extra:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        problems.append(f"plugins: {e}")
    if problems:
        raise ConfigError(problems)
    if os.environ.get(TRACE_ENV):
        trace_to_stderr(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager, problems: list[str]) -> None:
    """Load each entry point on its own, so one broken package is reported by name."""
    for ep in importlib.metadata.entry_points(group=PROJECT):
        try:
            pm.load_setuptools_entrypoints(PROJECT, name=ep.name)
        except Exception as e:
            dist = getattr(ep, "dist", None)
            origin = f" (from {dist.name} {dist.version})" if dist is not None else ""
            problems.append(
                f"plugins: entry point {ep.name!r}{origin} cannot be loaded:"
                f" {type(e).__name__}: {e}"
            )


def trace_to_stderr(pm: pluggy.PluginManager) -> None:
    """pluggy's tracing (``pm.enable_tracing``: each call with its arguments and result), its
    lines prefixed ``[plugins]`` on stderr, plus one line per call naming the implementations
    in the order pluggy calls them (``[plugins] enrich_event -> tagger, other``)."""
    write = pm.trace.root.get("hook")
    pm.trace.root.setwriter(lambda line: print(f"[plugins] {line}", end="", file=sys.stderr))

    def before(name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        write(name, "->", ", ".join(i.plugin_name for i in reversed(impls)))

    def after(*args: Any) -> None:
        pass

    pm.add_hookcall_monitoring(before, after)
    pm.enable_tracing()


def plugin_name_of(pm: pluggy.PluginManager, plugin: object) -> str:
    """The name a plugin was registered under (the entry-point name for entry points)."""
    name = pm.get_name(plugin)
    if name:
        return name
    fallback: str = getattr(plugin, "__name__", repr(plugin))
    return fallback


async def await_me_maybe(value: Any) -> Any:
    """Await `value` when a component method returned an awaitable; else return it."""
    import inspect

    if inspect.isawaitable(value):
        return await value
    return value
