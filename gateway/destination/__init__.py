"""The destination kit: what a destination plugin is given and what it returns.

Role: the public contract between the delivery engine and destination types (built-in or
third-party): `Outcome`, `Services`, the HTTP helpers, payload shapes and template helpers.
May import the store's records and the leaves (errors, units, clock); never the engine.
"""
