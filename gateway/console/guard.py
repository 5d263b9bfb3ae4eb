"""Wrong admin tokens, counted per client address: the console's login form and the admin
API's bearer token check the same secret, so guesses at either count against one budget.

After ``admin.max_failures`` wrong tokens from one address within ``admin.failure_window``,
that address is answered 429 (with ``Retry-After``) at both doors until the window ends, and
its tokens are not even compared. A right token clears the address's count. A request without
any token (no ``Authorization`` header, an empty login field) is not a guess and is not counted.
The client's address is the peer, or behind ``server.trusted_proxies`` the forwarded client
(as for the sources); IPv6 counts per /64. Counts live in the serving process's memory: with
``server.workers: N`` each worker counts on its own, and a restart or reload starts over.

One `AdminGuard` per process (``app.ctx.admin_guard``). It reads the limits from the live
configuration on every call, so a reload that changes them takes effect at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from sanic import Request

from gateway.config.models import AdminConfig, Network
from gateway.intake.auth import client_address
from gateway.intake.throttle import FailureThrottle

log = logging.getLogger("gateway.console")


class AdminGuard:
    """See the module docstring. Times are seconds from the caller's clock."""

    def __init__(self) -> None:
        self._throttle = FailureThrottle(0, 1.0)

    def _for(self, admin: AdminConfig) -> FailureThrottle:
        """The throttle for the current limits; a reload that changes them starts over."""
        t = self._throttle
        if (t.max_failures, t.window) != (admin.max_failures, admin.failure_window):
            t = self._throttle = FailureThrottle(admin.max_failures, admin.failure_window)
        return t

    @staticmethod
    def address(request: Request, trusted: Sequence[Network]) -> str:
        """The address the guard counts for `request`: the peer, or behind a proxy in
        `trusted` the forwarded client (`gateway.intake.auth.client_address`)."""
        forwarded = ", ".join(request.headers.getall("x-forwarded-for", [])) or None
        return client_address(str(request.ip), forwarded, trusted)

    def retry_after(self, admin: AdminConfig, address: str, now: float) -> int | None:
        """Whole seconds (at least 1) until `address` may try a token again, or None when it
        may now."""
        wait = self._for(admin).retry_after(address, now)
        return None if wait is None else max(1, math.ceil(wait))

    def failed(self, admin: AdminConfig, address: str, now: float, door: str) -> None:
        """Count a wrong token from `address` at `door` (``console login``, ``admin API``);
        logs one warning when the address reaches the limit."""
        throttle = self._for(admin)
        if throttle.failed(address, now):
            log.warning(
                "admin token: %d wrong tokens from %s (latest at the %s); answering 429 for %gs",
                throttle.max_failures,
                address,
                door,
                throttle.window,
            )

    def succeeded(self, admin: AdminConfig, address: str) -> None:
        """A right token clears `address`'s count."""
        self._for(admin).succeeded(address)
