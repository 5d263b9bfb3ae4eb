"""The outbound HTTP client: httpx's API over our own HTTP/1.1 transport.

`make_http_client()` returns the one `httpx.AsyncClient` a process shares (destinations receive
it as ``Services.http``). Underneath is `gateway.destination.h1.H1Transport` (keep-alive pool,
httptools' C parser): stock httpx spends most of its time in connection-pool bookkeeping
(upstream httpx issue #3215), and httpx-aiohttp's transport, the previous default, cost about
60% more client CPU per request. The side-by-side measurement is in
``docs/performance.md`` (``bench/bench_http_client.py`` reproduces it).

Contract:
- redirects are never followed (``follow_redirects=False``; the aiohttp transport also passes
  ``allow_redirects=False``), so a 3xx reaches the destination for classification;
- per-request timeouts come from the destination (``timeout=`` on each request);
- cookies are never kept or sent (deliveries are independent), and httpx's per-request INFO
  log line is silenced (it prints full URLs, which can be secrets);
- the caller closes the client (``await client.aclose()``) when the process stops.

With our transport the client is a `GatewayClient`, whose ``direct`` transport lets
`gateway.destination.http_destination.HTTPDestination` send without httpx's client, request
and response objects (`H1Transport.exchange`), the same bytes on the same pool for about half
the CPU; plugins that use ``Services.http`` itself go through httpx as usual.

`CALLBACK_GATEWAY_HTTP_TRANSPORT=aiohttp` (httpx-aiohttp) or ``=httpx`` (stock httpx) selects
another transport, for comparison or if ours misbehaves somewhere.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import os
from typing import Any

import httpx

from gateway.destination.h1 import H1Transport, connect_failure, read_upto

#: Connections per destination host (per process with the aiohttp and stock transports).
#: Per-destination ``concurrency`` is the real bound; this only stops a misconfiguration from
#: opening thousands of sockets.
MAX_CONNECTIONS = 512
#: Seconds an idle kept-alive connection may be reused.
KEEPALIVE = 30.0
USER_AGENT = "callback-gateway"


class GatewayClient(httpx.AsyncClient):
    """The shared client, with the transport under it when that is ours (else None)."""

    direct: H1Transport | None = None


def make_http_client(transport: str | None = None) -> httpx.AsyncClient:
    """The shared outbound client; `transport` is ``"h1"`` (default), ``"aiohttp"`` or
    ``"httpx"``."""
    kind = transport or os.environ.get("CALLBACK_GATEWAY_HTTP_TRANSPORT", "h1")
    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE,
    )
    common = {
        "follow_redirects": False,
        "timeout": httpx.Timeout(10.0),
        "headers": {"user-agent": f"{USER_AGENT}/{_version()}"},
        "trust_env": False,  # destination URLs are configuration; no proxy from the environment
    }
    if kind == "httpx":
        client = httpx.AsyncClient(limits=limits, **common)  # type: ignore[arg-type]
    elif kind == "h1":
        own = H1Transport(MAX_CONNECTIONS, keepalive_expiry=KEEPALIVE)
        client = GatewayClient(transport=own, **common)  # type: ignore[arg-type]
        client.direct = own
    elif kind == "aiohttp":
        client = httpx.AsyncClient(
            transport=_aiohttp_transport(limits),
            **common,  # type: ignore[arg-type]
        )
    else:
        raise ValueError(f"unknown HTTP transport {kind!r}; expected 'h1', 'aiohttp' or 'httpx'")
    # Deliveries are independent: no cookie a receiver sets is sent with a later delivery.
    # (Also skips httpx's cookie-jar parsing of every response, ~9% of a delivery's CPU.)
    client._cookies = _NoCookies()  # httpx 0.28 keeps the jar here; the public setter copies
    # httpx logs every request at INFO with its full URL, and destination URLs can be secrets
    # (a Slack incoming-webhook URL is one). Outcomes are logged by the delivery engine instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return client


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def _aiohttp_transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    class Transport(AiohttpTransport):
        """httpx-aiohttp 0.2.0 maps every aiohttp connection error (refused, reset, DNS) to
        ``httpx.ConnectTimeout``; re-map them by their cause so that a refused connection
        is reported as one, not as a timeout."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                return await super().handle_async_request(request)
            except httpx.TransportError as e:
                raise _remap(e, aiohttp) from e.__cause__

    return Transport(limits=limits, trust_env=False)


def _remap(e: httpx.TransportError, aiohttp: Any) -> httpx.TransportError:
    cause = e.__cause__
    if cause is None or isinstance(cause, TimeoutError | aiohttp.ServerTimeoutError):
        return e
    message = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ClientConnectorError):
        if not isinstance(cause, aiohttp.ClientSSLError):  # TLS failures keep aiohttp's text
            message = _connect_failure(cause)
        return httpx.ConnectError(message, request=e.request if _has_request(e) else None)
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message)
    if isinstance(cause, aiohttp.ClientConnectionError) and isinstance(e, httpx.TimeoutException):
        return httpx.NetworkError(message)
    return e


def _connect_failure(cause: Any) -> str:
    """What went wrong connecting, without aiohttp's ``ssl:default`` (its text names the
    connection key's TLS setting, which reads ``default`` even for a plain ``http://`` URL):
    the same text as our own transport's."""
    return connect_failure(cause.host, cause.port, cause.os_error)


def _has_request(e: httpx.TransportError) -> bool:
    try:
        e.request  # noqa: B018 - raises when unset
    except RuntimeError:
        return False
    return True


def _version() -> str:
    from gateway import __version__

    return __version__


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date
    (RFC 9110 section 10.2.3). None when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


#: How much of a response body destinations read: enough for an error message, never a flood.
MAX_READ = 64 * 1024


async def read_capped(resp: httpx.Response, limit: int = MAX_READ) -> bytes:
    """At most `limit` bytes of `resp`'s body, without reading the rest into memory."""
    try:
        return resp.content[:limit]  # already in memory (for example a MockTransport response)
    except httpx.ResponseNotRead:
        pass
    return await read_upto(resp.aiter_raw(), limit)
