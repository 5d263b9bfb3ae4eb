"""Delivery: the engine that claims and sends deliveries, its retry policy, rate limiter,
payload shapes, the shared outbound HTTP client, and admin operations (list/show/replay/pause).

Modules: `engine` (DeliveryEngine), `retry` (RetryPolicy), `ratelimit` (TokenBucket),
`payload` (original/envelope/template bodies), `http` (make_http_client, Retry-After),
`admin` (operations shared by the CLI and the admin API).
"""

from __future__ import annotations

from gateway.delivery.engine import DeliveryEngine
from gateway.delivery.http import make_http_client

__all__ = ["DeliveryEngine", "make_http_client"]
