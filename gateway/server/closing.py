"""Stop taking requests the moment the server begins to stop (SIGTERM, SIGINT).

Sanic stops listening only after the ``before_server_stop`` listeners have finished (the
gateway's drain: routing what intake handed over, letting delivery tries finish, up to about
15 s), and until then keeps serving every request that arrives on an open keep-alive
connection. A provider that keeps its connections open would have its callbacks acknowledged
all through the drain, and kept the process alive past its stop timeout.

`Closing.begin()`, called first thing in ``before_server_stop``, instead:

- closes every idle connection of this process at once;
- marks busy ones (a request being received or handled) to close after their answer, which
  then carries ``Connection: close``: requests in flight finish normally;
- answers any request that still arrives (on a new connection, as the listening socket stays
  open until Sanic closes it) with 503 ``shutting_down`` and ``Connection: close``; the
  provider sends it again, to this gateway's successor or another instance.

Sanic keeps no public handle on its set of open connections; every connection's protocol
holds the same set (``request.protocol.connections``), which the request middleware records.
A connection opened before any request arrived is idle, and Sanic closes it when it stops
listening.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse

from gateway.intake.responses import error

log = logging.getLogger("gateway")

#: How long Sanic waits, after it stopped listening, for connections still busy before it
#: aborts them (``GRACEFUL_SHUTDOWN_TIMEOUT``; Sanic's default is 15 s). A callback answers in
#: milliseconds; one still unanswered after this is not acknowledged and will be sent again.
CONNECTIONS_GRACE = 5.0


class Closing:
    """Per process: whether the server is stopping, and the connections to close then."""

    def __init__(self) -> None:
        self.closing = False
        self._connections: set[Any] | None = None
        #: Connections busy when `begin` ran: their request (whose body may still be on its
        #: way when `on_request` sees it) is served.
        self._finishing: set[Any] = set()

    async def on_request(self, request: Request) -> HTTPResponse | None:
        """Request middleware: None while serving; a 503 with ``Connection: close`` once
        `begin` has run."""
        protocol = request.protocol
        if self._connections is None:
            self._connections = getattr(protocol, "connections", None)
        if not self.closing:
            return None
        _close_after_answer(protocol)
        if protocol in self._finishing:
            self._finishing.discard(protocol)
            return None
        return error(
            503,
            "shutting_down",
            "the gateway is stopping; send the request again",
            {"Connection": "close"},
        )

    def begin(self) -> None:
        """Stop taking requests: close idle connections, let busy ones finish and close."""
        if self.closing:
            return
        self.closing = True
        closed = busy = 0
        for conn in list(self._connections or ()):
            if conn.close_if_idle():
                closed += 1
            else:
                _close_after_answer(conn)
                self._finishing.add(conn)
                busy += 1
        log.info(
            "stopping: no new requests (%d idle connections closed, %d finishing)", closed, busy
        )


def _close_after_answer(protocol: Any) -> None:
    http = getattr(protocol, "http", None)  # Sanic's HTTP/1.1 state of the connection
    if http is not None:
        http.keep_alive = False
