"""Intake: the request path of a source (auth, body checks, parse, dedupe key, group commit).

Role: answer the provider once a callback is durably stored; no plugin hooks, no outbound I/O.
May import config, plugin components (source formats), the store, ops (metrics, logs) and the
leaves; never routing or delivery (it hands committed events over through a `Handoff`).
"""
