"""Routing: the router and the plugin chain (filters, enrichers, routes) that decide where a
committed event goes, and ``explain``, the same decision as a dry run.

Role: turn ``received`` events into deliveries. May import config, the plugin system, the
destination kit (for previews), the store, ops and the leaves; never intake or delivery.
"""
