"""Calling hooks: every call goes through pluggy's hook caller, so pluggy's semantics hold.

pluggy is synchronous; plugins may write any hook as ``async def``. `call_hook` runs pluggy's
call (``pm.hook.name(**kwargs)``) in a greenlet; an implementation that returns an awaitable
hands it to the calling coroutine, which awaits it on the event loop and resumes pluggy's call
with the value. So, exactly as pluggy documents for plain functions:

- implementations run one after another in pluggy's order (``tryfirst`` first, ``trylast``
  last, otherwise the plugin registered last first), async ones included, each finished before
  the next starts;
- ``hookwrapper=True`` and ``wrapper=True`` implementations see the awaited results (not
  coroutines) and may replace them or the exception;
- a ``firstresult`` hook stops at the first implementation that returns a value, and the
  implementations after it are never called (not even started).

Wrappers themselves must be plain generator functions, as pluggy requires.

Every implementation is wrapped once, when its plugin is registered (`bridge_plugin`), by a
function that awaits through the greenlet, records ``(plugin name, result)`` for the caller (the
router names the plugin that dropped an event, ``explain`` shows what each one added), and marks
an exception it raises with its plugin's name. `call_hook` raises `PluginError` naming the
plugin whose implementation raised (the innermost one when a wrapper re-raises it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import greenlet
import pluggy

from gateway.errors import PluginError

#: The attribute an exception raised by an implementation carries: its plugin's name.
PLUGIN_ATTR = "__callback_gateway_plugin__"


@dataclass
class HookCall:
    """What one `call_hook` saw: ``(plugin name, returned value)`` per implementation that ran,
    in call order (wrappers are not listed)."""

    returned: list[tuple[str, Any]] = field(default_factory=list)
    #: Called with ``(plugin name, value)`` as each implementation returns, before the next
    #: one starts (the chain merges ``enrich_event`` results into the event the next one sees).
    #: An exception it raises counts as that implementation's.
    on_result: Callable[[str, Any], None] | None = None
    _parent: Any = None

    def wait(self, awaitable: Any) -> Any:
        """Inside the hook's greenlet: have the calling coroutine await `awaitable`."""
        return self._parent.switch(_Await(awaitable))


@dataclass
class _Await:
    awaitable: Any


_CALL: contextvars.ContextVar[HookCall | None] = contextvars.ContextVar("hook_call", default=None)
#: The plugin whose implementation is running (registration hooks read it in ``register``).
_PLUGIN: contextvars.ContextVar[str | None] = contextvars.ContextVar("hook_plugin", default=None)


def current_plugin() -> str | None:
    """The name of the plugin whose hook implementation is running now, if any."""
    return _PLUGIN.get()


def plugin_of(exc: BaseException) -> str | None:
    """The plugin an exception raised by a hook implementation came from."""
    return getattr(exc, PLUGIN_ATTR, None)


def _mark(exc: BaseException, plugin: str) -> None:
    if getattr(exc, PLUGIN_ATTR, None) is None:
        with contextlib.suppress(AttributeError, TypeError):  # a type with __slots__
            setattr(exc, PLUGIN_ATTR, plugin)


async def call_hook(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """``hook(**kwargs)`` with pluggy's semantics, async implementations awaited (see the module
    docstring). Returns what pluggy returns (a list of non-None results, or one value for a
    ``firstresult`` hook). Raises `PluginError` naming the plugin that raised."""
    value, _ = await call_hook_traced(hook, **kwargs)
    return value


async def call_hook_traced(
    hook: pluggy.HookCaller,
    on_result: Callable[[str, Any], None] | None = None,
    **kwargs: Any,
) -> tuple[Any, HookCall]:
    """`call_hook`, also returning the `HookCall` record of what each implementation returned;
    `on_result` as in `HookCall`."""
    call = HookCall(on_result=on_result)
    if not hook.get_hookimpls():
        return (None if _firstresult(hook) else []), call
    context = contextvars.copy_context()
    context.run(_CALL.set, call)
    child = greenlet.greenlet(lambda: hook(**kwargs))
    child.gr_context = context
    call._parent = greenlet.getcurrent()
    try:
        request = child.switch()
        while not child.dead:
            try:
                value = await request.awaitable
            except BaseException as e:  # the implementation's failure goes back to pluggy
                request = child.throw(e)
            else:
                request = child.switch(value)
    except Exception as e:
        raise PluginError(plugin_of(e) or f"a {hook.name} hook", e) from e
    return request, call


def call_hook_sync(hook: pluggy.HookCaller, **kwargs: Any) -> Any:
    """``hook(**kwargs)`` for hooks the gateway calls outside the event loop (registration);
    an implementation that returns an awaitable is an error naming its plugin."""
    try:
        return hook(**kwargs)
    except Exception as e:
        raise PluginError(plugin_of(e) or f"a {hook.name} hook", e) from e


def _firstresult(hook: pluggy.HookCaller) -> bool:
    spec = hook.spec
    return bool(spec is not None and spec.opts.get("firstresult"))


def bridge_plugin(pm: pluggy.PluginManager, plugin: object) -> None:
    """Wrap every hook implementation of `plugin` (see the module docstring). Idempotent."""
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not getattr(impl.function, "_gateway_bridged", False):
                impl.function = _bridged(impl)  # type: ignore[misc]


def _bridged(impl: pluggy.HookImpl) -> Callable[..., Any]:
    fn: Callable[..., Any] = impl.function
    name = impl.plugin_name
    if impl.hookwrapper or impl.wrapper:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            try:
                return (yield from fn(*args, **kwargs))
            except BaseException as e:
                _mark(e, name)
                raise

        wrapper._gateway_bridged = True  # type: ignore[attr-defined]
        return wrapper

    @functools.wraps(fn)
    def implementation(*args: Any, **kwargs: Any) -> Any:
        token = _PLUGIN.set(name)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                call = _CALL.get()
                if call is None:
                    if inspect.iscoroutine(value):
                        value.close()
                    raise TypeError(f"this hook is called synchronously; {fn.__name__} is async")
                value = call.wait(value)
            call = _CALL.get()
            if call is not None:
                call.returned.append((name, value))
                if call.on_result is not None:
                    call.on_result(name, value)
        except BaseException as e:
            _mark(e, name)
            raise
        finally:
            _PLUGIN.reset(token)
        return value

    implementation._gateway_bridged = True  # type: ignore[attr-defined]
    return implementation
