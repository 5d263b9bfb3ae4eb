"""Route conditions: ``match:`` operators and sandboxed ``when:`` expressions, compiled.

Role: the small language routes are written in, shared by configuration validation (``check``
reports a bad condition with its key path) and the routing chain (which evaluates them).
Imports nothing from the gateway but the leaves.
"""
