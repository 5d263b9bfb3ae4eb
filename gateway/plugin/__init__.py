"""The plugin system: the pluggy manager factory, the hook caller, component registries and the
``plugins`` report.

Role: load plugins (entry points and YAML ``plugins:``) and call hooks with pluggy's semantics.
May import the hook specifications and the leaves only.
"""
