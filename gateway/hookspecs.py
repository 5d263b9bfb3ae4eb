"""The plugin API: every hook callback-gateway calls, with its contract.

Plugins implement these with `@gateway.hookimpl`; the docstrings here are the reference
documentation (``docs/plugins.md`` repeats them with examples, and a test keeps the two in step).

Every call goes through pluggy's hook caller (`gateway.plugin.hooks.call_hook`), so pluggy's
semantics hold: implementations run one at a time in pluggy's order (the plugin registered last
first; ``@hookimpl(tryfirst=True)`` / ``trylast=True`` move one to the front or the back);
``wrapper=True`` and ``hookwrapper=True`` implementations see the results and may replace them;
a spec with ``firstresult=True`` stops at the first non-None result. Any implementation may be
``async def``: it is awaited in its turn, before the next one starts. Implementations must not
give parameters default values (pluggy would not pass them).
"""

from __future__ import annotations

from typing import Any

from gateway import hookspec


@hookspec
def register_source_formats(register: Any) -> None:
    """Make body formats available to ``sources.<name>.format``.

    :param register: call ``register(name, component)`` once per format. A component is a class
        with an ``Options`` pydantic model (validated from ``sources.<name>.options``) whose
        instances implement ``gateway.plugin.components.SourceFormat``. A name registered twice is a
        startup error naming both plugins.
    """


@hookspec
def register_filters(register: Any) -> None:
    """Make filters available to routes (``filter: [name]``) and to ``filters:`` in the config.

    :param register: ``register(name, component)``; the component is a class with an
        ``Options`` model and a ``keep(event, meta)`` method (see
        ``gateway.plugin.components.Filter``).
        ``keep`` returns ``True`` (or ``None``) to keep the event for the route, ``False`` or a
        reason string to drop it for that route; it may be ``async``. It sees the provider's
        fields plus enrichments, and ``meta`` with ``route``, ``dry_run`` (true under
        ``explain``) and ``marks`` (durable per-key state: ``await marks.get(key)``,
        ``advance(key, rank, value)``, ``set(key, value)``; not written in a dry run).
        The class is instantiated once per configured instance with its validated options.
    """


@hookspec
def register_enrichers(register: Any) -> None:
    """Make enrichers available to routes (``enrich: [name]``) and to ``enrichers:``.

    :param register: ``register(name, component)``; the component is a class with an
        ``Options`` model and an ``enrich(event, meta)`` method (may be ``async``) returning a
        JSON-serializable dict merged into that route's enrichment, or ``None``. ``meta`` is
        as for filters. Raising holds the event for a later retry, naming the enricher.
    """


@hookspec
def register_destinations(register: Any) -> None:
    """Make destination types available to ``destinations.<name>.type``.

    :param register: ``register(name, component)``; the component is a class with an
        ``Options`` model whose instances deliver one delivery and classify the outcome
        (see ``gateway.plugin.components.Destination``).
    """


@hookspec
def enrich_event(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
    """Add fields to every event before routing.

    Runs in the router (never on the request path), after ``filter_event`` and before routes
    are matched, so ``match`` and ``when`` see what it adds.

    :param event: the provider's fields plus what the implementations called before this one
        added (do not modify it: return what to add).
    :param meta: gateway metadata: ``event_id``, ``source``, ``received_at`` (epoch seconds).
    :return: a JSON-serializable dict merged into the event's enrichment (every destination
        sees it; results merge in call order, so a later one wins on a shared key), or ``None``
        to add nothing. Raising holds the event for a later retry with this plugin's name and
        error visible.
    """


@hookspec
def filter_event(event: dict[str, Any], meta: dict[str, Any]) -> bool | None:
    """Drop an event before routing.

    :param event: the provider's fields (a copy).
    :param meta: ``event_id``, ``source``, ``received_at``.
    :return: ``False`` to drop the event (recorded as filtered, with this plugin's name),
        ``True`` or ``None`` to let it through. Any ``False`` among the results (after
        wrappers) drops it. Raising holds the event for a later retry.
    """


@hookspec
def delivery_finished(delivery: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Observe the end of a delivery attempt.

    :param delivery: id, event_id, source, route, destination, attempts, state.
    :param outcome: ``state`` (``delivered``, ``pending`` for a scheduled retry, ``dead``),
        ``error`` (text or ``None``), ``status`` (HTTP/SMTP code or ``None``).
        The attempt is already recorded: an error raised here is logged with the plugin's name
        and otherwise ignored (as in pluggy, it ends the call for the implementations after it).
    """


@hookspec
def startup(gateway: Any) -> None:
    """Called once per process after the store is open and before traffic is served.

    :param gateway: the process's ``gateway.runtime.Gateway``: ``config``, ``store``, ``http``
        (the shared client), ``clock``, ``metrics``.
    """


@hookspec
def shutdown(gateway: Any) -> None:
    """Called once per process when the gateway stops, before the store is closed."""
