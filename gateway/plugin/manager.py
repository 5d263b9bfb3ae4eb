"""Building the plugin manager: built-ins and third-party plugins take the same path.

`make_plugin_manager()` is a factory (never a module global): entry points of the group
``callback_gateway`` (built-ins are registered there by our own pyproject), then modules named
under ``plugins:`` in the config. ``check_pending()`` makes a misspelled hook implementation
fail at startup. ``CALLBACK_GATEWAY_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pluggy

from gateway import PROJECT, hookspecs
from gateway.errors import ConfigError


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
    pm = pluggy.PluginManager(PROJECT)
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
        pm.register(module, name=name)
    for obj in extra:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        problems.append(f"plugins: {e}")
    if problems:
        raise ConfigError(problems)
    if os.environ.get("CALLBACK_GATEWAY_TRACE_PLUGINS"):
        _trace(pm)
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


def _trace(pm: pluggy.PluginManager) -> None:
    def before(
        hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
    ) -> None:
        names = ", ".join(impl.plugin_name for impl in impls)
        print(f"[plugins] {hook_name} -> {names}", file=sys.stderr)

    def after(
        outcome: pluggy.Result[Any],
        hook_name: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        pass

    pm.add_hookcall_monitoring(before, after)


def plugin_name_of(pm: pluggy.PluginManager, plugin: object) -> str:
    """The name a plugin was registered under (the entry-point name for entry points)."""
    name = pm.get_name(plugin)
    if name:
        return name
    fallback: str = getattr(plugin, "__name__", repr(plugin))
    return fallback


async def await_me_maybe(value: Any) -> Any:
    """Await `value` when a hook implementation returned an awaitable; else return it."""
    if inspect.isawaitable(value):
        return await value
    return value


async def call_each(
    hook: Any, *, tracing: bool | None = None, **kwargs: Any
) -> list[tuple[str, Any]]:
    """Call every implementation of `hook` separately, awaiting each result.

    Returns ``(plugin_name, result)`` pairs. An implementation that raises is re-raised as
    `gateway.errors.PluginError` carrying its plugin's name, so callers can hold the event.
    `tracing` (default: ``CALLBACK_GATEWAY_TRACE_PLUGINS`` is set) prints each call; callers
    on the per-event path pass the flag they read once.
    """
    from gateway.errors import PluginError

    results = []
    if tracing is None:
        tracing = bool(os.environ.get("CALLBACK_GATEWAY_TRACE_PLUGINS"))
    for impl in reversed(hook.get_hookimpls()):  # pluggy order: last registered first
        if tracing:
            print(f"[plugins] {hook.name} -> {impl.plugin_name}", file=sys.stderr)
        try:
            value = await await_me_maybe(impl.function(*[kwargs[a] for a in impl.argnames]))
        except Exception as e:
            raise PluginError(impl.plugin_name, e) from e
        results.append((impl.plugin_name, value))
    return results
