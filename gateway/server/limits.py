"""Connection and time limits of the HTTP server (the ``server:`` keys), as a Sanic protocol.

Sanic's own timers restart on every byte received, so a client trickling its header one byte a
second is never timed out, and a body that stops short of its Content-Length is cut by the
response timeout (503, after 60 s). `GuardedProtocol` replaces that with:

- ``server.header_timeout``: the whole request header (measured from its first byte; for a new
  connection, from the connect) must arrive within it, else 408 and the connection closes;
- ``server.body_timeout``: the whole body must arrive within it once the header is in, else 408
  and the connection closes;
- ``server.keep_alive_timeout``: an idle connection between requests is closed after it;
- ``server.max_connections`` (per worker process): at the cap, a new connection makes room by
  closing the connection that has waited longest without a request in progress (idle, or still
  sending its header); only when every connection is in the middle of a request is the new one
  answered 503 and closed. Idle connections therefore cannot lock out ``/healthz``.
- ``server.max_header_size``: a larger header is answered 431 (Sanic says 413).

`configure(app, server)` copies the settings into the app's config; ``run`` passes the protocol
class to Sanic. `raise_fd_limit` lifts the process's open-file limit so the cap is reachable.
"""

from __future__ import annotations

import logging
import resource
from time import monotonic
from typing import Any

from sanic import Sanic
from sanic.exceptions import PayloadTooLarge, RequestTimeout, SanicException
from sanic.http import Http, Stage
from sanic.models.server_types import ConnInfo
from sanic.server.protocols.http_protocol import HttpProtocol

log = logging.getLogger("gateway.server.limits")

#: File descriptors kept free for everything that is not a client connection (store, delivery
#: connections, logs, the listening socket).
FD_RESERVE = 256
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: 75\r\n\r\n"
    b'{"error":"unavailable","detail":"too many connections; try again shortly"}\n'
)
assert len(_REFUSED.split(b"\r\n\r\n", 1)[1]) == 75


class HeaderTooLarge(SanicException):
    """431: the request header is over ``server.max_header_size``."""

    status_code = 431
    quiet = True


class _Http(Http):
    """Sanic's HTTP/1.1 state machine, noting when each request header starts and ends."""

    __slots__ = ("head_done", "head_started", "requests_seen")

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self.head_started = self.head_done = monotonic()
        self.requests_seen = 0

    async def http1_request_header(self) -> None:
        self.head_started = monotonic()
        try:
            await super().http1_request_header()
        except PayloadTooLarge:
            limit = self.protocol.app.config.REQUEST_MAX_HEADER_SIZE
            raise HeaderTooLarge(
                f"the request header exceeds server.max_header_size ({limit} bytes)"
            ) from None
        self.head_done = monotonic()
        self.requests_seen += 1


class GuardedProtocol(HttpProtocol):
    """`HttpProtocol` with the limits described in the module docstring."""

    HTTP_CLASS = _Http
    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        cap = self.app.config.get("GATEWAY_MAX_CONNECTIONS") or 0
        if cap and len(self.connections) >= cap and not self._make_room():
            self.transport = transport
            self.conn_info = ConnInfo(transport, unix=self._unix)
            transport.write(_REFUSED)
            transport.close()
            return
        super().connection_made(transport)

    def _make_room(self) -> bool:
        """Close the connection waiting longest without a request in progress."""
        victim, oldest = None, float("inf")
        for conn in self.connections:
            http = getattr(conn, "_http", None)
            stage = http.stage if http is not None else Stage.IDLE
            if stage in (Stage.IDLE, Stage.REQUEST) and conn._time < oldest:
                victim, oldest = conn, conn._time
        if victim is None:
            log.warning("server.max_connections reached; refusing a connection")
            return False
        self.connections.discard(victim)
        victim.close(timeout=0)
        return True

    def check_timeouts(self) -> None:
        """Runs periodically (scheduled by Sanic when the connection starts)."""
        try:
            http = self._http
            if not self._task or http is None:
                return
            config = self.app.config
            now = monotonic()
            stage = http.stage
            timeout: RequestTimeout | None = None
            if stage is Stage.IDLE:
                if http.requests_seen == 0:
                    if now - http.head_started > config.GATEWAY_HEADER_TIMEOUT:
                        self.close()  # connected, then sent nothing
                        return
                elif now - self._time > self.keep_alive_timeout:
                    self.close()
                    return
            elif stage is Stage.REQUEST:
                if now - http.head_started > config.GATEWAY_HEADER_TIMEOUT:
                    timeout = RequestTimeout(
                        "the request header did not arrive within server.header_timeout"
                        f" ({config.GATEWAY_HEADER_TIMEOUT:g}s)"
                    )
            elif stage is Stage.HANDLER and http.request_body:
                if now - http.head_done > config.GATEWAY_BODY_TIMEOUT:
                    timeout = RequestTimeout(
                        "the body did not arrive within server.body_timeout"
                        f" ({config.GATEWAY_BODY_TIMEOUT:g}s)"
                    )
                    http.request_body = None  # nothing more to drain: close after the 408
            elif stage in (Stage.HANDLER, Stage.RESPONSE, Stage.FAILED) and (
                now - self._time > self.response_timeout
            ):
                super().check_timeouts()  # Sanic's response timeout (503)
                return
            if timeout is not None:
                http.exception = timeout
                http.keep_alive = False
                self._task.cancel("timeout")
                return
            self._callback_check_timeouts = self.loop.call_later(
                config.GATEWAY_TIMER_INTERVAL, self.check_timeouts
            )
        except Exception:
            log.exception("checking connection timeouts failed")


def peer(request: Any) -> str:
    """The connection's remote address, also for the placeholder request Sanic builds when the
    header could not be read (431, header timeout), whose `ip` is empty."""
    if request.ip:
        return str(request.ip)
    transport = getattr(request, "transport", None)
    address = transport.get_extra_info("peername") if transport is not None else None
    return str(address[0]) if address else "-"


def configure(app: Sanic, server: Any) -> None:
    """Copy ``server:`` limits into `app`'s config (read by `GuardedProtocol`)."""
    config = app.config
    config.KEEP_ALIVE_TIMEOUT = server.keep_alive_timeout
    config.REQUEST_TIMEOUT = server.header_timeout
    config.REQUEST_MAX_HEADER_SIZE = server.max_header_size
    # Sanic caps the header at its read buffer less 4 KiB; keep the buffer above the header.
    config.REQUEST_BUFFER_SIZE = max(65536, server.max_header_size + 4096)
    config.GATEWAY_HEADER_TIMEOUT = server.header_timeout
    config.GATEWAY_BODY_TIMEOUT = server.body_timeout
    config.GATEWAY_MAX_CONNECTIONS = min(server.max_connections, connections_that_fit())
    shortest = min(server.header_timeout, server.body_timeout, server.keep_alive_timeout)
    config.GATEWAY_TIMER_INTERVAL = max(0.05, min(1.0, shortest / 4))


def connections_that_fit() -> int:
    """How many client connections the open-file limit leaves room for (`FD_RESERVE` kept)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if soft == resource.RLIM_INFINITY else max(1, soft - FD_RESERVE)


def raise_fd_limit(max_connections: int) -> None:
    """Lift the soft open-file limit towards the hard one so that `max_connections` client
    connections fit (called by ``run`` before workers start; they inherit it). Warns when the
    hard limit is too small: the cap is then lowered to what fits (`connections_that_fit`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < want:
        log.warning(
            "server.max_connections %d needs %d open files but the limit is %d;"
            " capping connections at %d",
            max_connections,
            want,
            target,
            connections_that_fit(),
        )
