"""Delivery: the engine that claims due deliveries and calls destinations, its retry policy,
rate limiter, batching, and the admin operations (list, show, replay, pause) that the CLI, the
admin API and the console share.

Role: get every delivery to its destination or to the dead letters. May import config, the
plugin system, the destination kit, the store, ops and the leaves; never intake or routing.
"""
