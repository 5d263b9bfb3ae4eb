"""Routing: the plugin chain (filters, enrichers, routes) that decides where an event goes.

`Chain(loaded, store, clock).evaluate(event, meta)` returns a `Decision`: its state (``routed``,
``unmatched``, ``filtered``), one `Target` per (route, destination), the reason, and a trace that
``explain`` renders. `match` compiles route ``match:`` conditions, `expressions` their ``when:``.
"""

from gateway.routing.chain import Chain, Decision, Step, Target

__all__ = ["Chain", "Decision", "Step", "Target"]
