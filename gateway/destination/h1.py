"""A lean HTTP/1.1 transport under httpx: keep-alive connections and httptools' C parser.

Destinations keep httpx's API (``Services.http`` is an `httpx.AsyncClient`); this module is only
what carries the bytes. A delivery is one small request to a host that receives many of them,
so the transport does the least that is correct for that: one pool of idle keep-alive
connections per (scheme, host, port), the request written in one ``write``, the response parsed
by ``httptools`` (the C parser Sanic already depends on) inside an `asyncio.Protocol`.
``bench/bench_http_client.py`` measures it against httpx-aiohttp and stock httpx.

Contract (`H1Transport`):

- HTTP/1.1 over TCP, ``https`` through `ssl`: certificates and host names verified against
  certifi's CA bundle, as stock httpx does (``ssl_context`` replaces it; no ``verify=False``).
  No proxies, no HTTP/2, no redirects (httpx never follows them here), no ``Expect:
  100-continue``.
- Timeouts come from the request (httpx's ``timeout`` extension): ``connect`` bounds opening a
  connection, ``read`` bounds each wait for response bytes (a peer that does not take the
  request never answers it either), ``pool`` bounds the wait for a connection when
  `max_connections` to the host are open; the request is one buffer handed to the socket, so
  ``write`` has nothing of its own to bound. Errors are httpx's: `httpx.ConnectError` (``cannot
  connect to HOST:PORT: REASON``), `httpx.ConnectTimeout`, `httpx.ReadTimeout`,
  `httpx.PoolTimeout`, `httpx.ReadError` (the peer closed mid-body),
  `httpx.RemoteProtocolError` (a peer that closes before answering or answers something that
  is not HTTP).
- A header name or value holding CR, LF or NUL is refused (`httpx.LocalProtocolError`) before
  anything is sent, as h11 does under stock httpx: event data in a templated header cannot add
  headers of its own.
- The response body streams: a caller that stops reading early (``read_capped``) closes the
  stream, and the connection, whose rest of a body is unknown, is closed instead of reused.
  Reading pauses while more than `HIGH_WATER` bytes wait unread.
- A connection goes back to the pool only when its response was read to the end and both sides
  allow keep-alive; idle connections are dropped after `keepalive_expiry` seconds or as soon as
  the peer closes them.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import certifi
import httptools
import httpx

#: Bytes that may not appear in a header name or value: they would start a header (or a body)
#: of the sender's choosing.
_UNSAFE = re.compile(rb"[\r\n\x00]")
#: Unread response bytes at which a connection stops reading from its socket.
HIGH_WATER = 256 * 1024
#: Most response header bytes accepted (a peer sending more is not an HTTP server we talk to).
MAX_HEADER_BYTES = 64 * 1024

_Key = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response currently being read from it."""

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self.idle_since = 0.0
        self._parser: Any = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._head_done = False
        self._complete = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._no_body = False
        self._keep_alive = False
        #: Whether any byte of the current response arrived.
        self._received = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes while idle: nothing may arrive between responses
            self.error = httpx.RemoteProtocolError("unexpected data on an idle connection")
            self.close()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except Exception as e:  # httptools' parser errors, an upgrade we did not ask for
            self.error = httpx.RemoteProtocolError(f"invalid HTTP response: {e}")
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # A body delimited by the end of the connection ends here.
        if (
            self._parser is not None
            and self._head_done
            and not self._complete
            and self._until_eof()
        ):
            self._complete = True
        if self.error is None and not self._complete:
            if self._head_done:
                self.error = httpx.ReadError("the server closed the connection mid-body")
            elif self._parser is not None:
                self.error = httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
        self._wake()

    def pause_writing(self) -> None:  # writes are one small request; nothing to throttle
        pass

    # -- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("response headers too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim response: the real one follows
            self._headers = []
            return
        self._status = status
        self._head_done = True
        if self._no_body:
            self._complete = True
            self._keep_alive = bool(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._head_done:
            self._complete = True
            # Asked here: httptools resets its state once the message is complete.
            self._keep_alive = bool(self._parser.should_keep_alive())

    # -- used by the transport --------------------------------------------------------------
    def begin(self, no_body: bool = False) -> None:
        """Ready to read one response (`no_body`: the answer to a HEAD request)."""
        self._no_body = no_body
        self._parser = httptools.HttpResponseParser(self)
        self._status, self._headers, self._header_bytes = 0, [], 0
        self._head_done = self._complete = self._keep_alive = False
        self._received = False
        self._chunks.clear()
        self._buffered = 0

    def reusable(self) -> bool:
        return (
            not self.closed
            and self.error is None
            and self._complete
            and self._buffered == 0
            and self._keep_alive
        )

    def unanswered(self) -> bool:
        """Closed before a single byte of the response arrived."""
        return self.closed and not self._received

    def finish(self) -> None:
        """The response was handled: back to idle (the parser goes, so stray bytes are an
        error)."""
        self._parser = None
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def head(self, wait: float | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The status and headers; `wait` bounds each wait for bytes (the read timeout)."""
        while not self._head_done:
            await self._wait(wait)
        return self._status, self._headers

    async def body(self, wait: float | None) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= HIGH_WATER // 2 and not self.closed:
                    self._paused = False
                    assert self.transport is not None
                    self.transport.resume_reading()
                yield chunk
            if self._complete:
                return
            await self._wait(wait)

    def _until_eof(self) -> bool:
        names = {n.lower() for n, _ in self._headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    async def _wait(self, wait: float | None) -> None:
        if self.error is not None:
            raise self.error
        if self.closed and not self._chunks and not self._complete:
            raise httpx.ReadError("the connection is closed")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            async with asyncio.timeout(wait):
                await self._waiter
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("no response bytes within the read timeout") from None
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection; closing it early closes the connection."""

    def __init__(self, pool: H1Transport, conn: _Connection, timeout: float | None) -> None:
        self._pool, self._conn, self._timeout = pool, conn, timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._conn.body(self._timeout):
            yield chunk

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._conn)


class H1Transport(httpx.AsyncBaseTransport):
    """See the module docstring. `max_connections` bounds open connections per host."""

    def __init__(
        self,
        max_connections: int = 512,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open: dict[_Key, int] = {}
        self._waiting: dict[_Key, deque[asyncio.Future[None]]] = {}
        self._ssl = ssl_context
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        data = encode_request(request.method, url.raw_path, request.headers.raw, body)
        conn, status, headers = await self._send(
            _key(url), data, timeouts, no_body=request.method == "HEAD"
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def exchange(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        wait: float,
        limit: int,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request and its answer: status, headers and at most `limit` bytes of the body.

        What `HTTPDestination` sends, without httpx's client, `Request` and `Response`
        objects, which cost about as much CPU as the rest of a delivery put together. Same
        pool, errors and retry as `handle_async_request`; `wait` bounds connecting, the
        wait for a free connection and each wait for bytes. `headers` are sent as given
        (Host first, the caller's own next), then Content-Length."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        data = encode_request(method, url.raw_path, headers, body)
        timeouts = {"connect": wait, "read": wait, "pool": wait}
        conn, status, head = await self._send(_key(url), data, timeouts, method == "HEAD")
        try:
            return status, head, await read_upto(conn.body(wait), limit)
        finally:
            self.release(conn)  # a body not read to its end closes the connection

    async def _send(
        self, key: _Key, data: bytes, timeouts: dict[str, Any], no_body: bool
    ) -> tuple[_Connection, int, list[tuple[bytes, bytes]]]:
        """Send `data` on a pooled connection and read the response head."""
        conn, reused = await self._acquire(key, timeouts)
        try:
            status, headers = await self._exchange(conn, no_body, data, timeouts)
        except httpx.RemoteProtocolError:
            if not (reused and conn.unanswered()):
                raise
            # A kept-alive connection the peer closed as we sent (a race every HTTP/1.1
            # client has): once more on a new connection. Nothing of an answer came back, so
            # the receiver most likely saw nothing; if it did, the webhook-id repeats.
            conn, _ = await self._acquire(key, timeouts, fresh=True)
            status, headers = await self._exchange(conn, no_body, data, timeouts)
        return conn, status, headers

    async def _exchange(
        self, conn: _Connection, no_body: bool, data: bytes, timeouts: dict[str, Any]
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send `data` on `conn` and read the response head; `conn` is discarded on failure."""
        try:
            conn.begin(no_body=no_body)
            assert conn.transport is not None
            conn.transport.write(data)
            return await conn.head(timeouts.get("read"))
        except BaseException:
            self._discard(conn)
            raise

    def release(self, conn: _Connection) -> None:
        """A response is done with `conn`: pool it when it can carry another, else close it."""
        if not self._closed and conn.reusable():
            conn.finish()
            self._idle.setdefault(conn.key, []).append(conn)
            self._notify(conn.key)
        else:
            self._discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()

    # -- pool -------------------------------------------------------------------------------
    async def _acquire(
        self, key: _Key, timeouts: dict[str, Any], fresh: bool = False
    ) -> tuple[_Connection, bool]:
        """A connection to `key` and whether it was reused from the pool. `fresh` (after a
        kept-alive connection turned out closed) drops every idle one to `key` too: they are
        older than the one that failed."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not fresh and not conn.closed and now - conn.idle_since < self.keepalive_expiry:
                return conn, True
            self._discard(conn)
        if self._open.get(key, 0) >= self.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, deque()).append(waiter)
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await waiter
            except BaseException as e:
                if waiter.done() and not waiter.cancelled():  # woken, but not taking it
                    self._notify(key)
                if isinstance(e, TimeoutError):
                    raise httpx.PoolTimeout("no connection free within the pool timeout") from None
                raise
            finally:
                waiter.cancel()
            return await self._acquire(key, timeouts, fresh)
        self._open[key] = self._open.get(key, 0) + 1
        try:
            return await self._connect(key, timeouts.get("connect")), False
        except BaseException:
            self._open[key] -= 1
            self._notify(key)
            raise

    async def _connect(self, key: _Key, wait: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if scheme == "https":
            if self._ssl is None:  # the CA bundle httpx itself verifies against
                self._ssl = ssl.create_default_context(cafile=certifi.where())
            tls = {"ssl": self._ssl, "server_hostname": host}
        try:
            async with asyncio.timeout(wait):
                _, conn = await loop.create_connection(lambda: _Connection(key), host, port, **tls)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"cannot connect to {host}:{port} within {wait}s") from None
        except ssl.SSLError as e:
            raise httpx.ConnectError(f"TLS handshake with {host}:{port} failed: {e}") from e
        except OSError as e:
            raise httpx.ConnectError(connect_failure(host, port, e)) from e
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open[conn.key] = max(0, self._open.get(conn.key, 0) - 1)
        self._notify(conn.key)

    def _notify(self, key: _Key) -> None:
        """Wake one caller waiting for a connection to `key` (a connection went idle or
        closed)."""
        waiting = self._waiting.get(key)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def connect_failure(host: str, port: int, err: OSError) -> str:
    """``cannot connect to 127.0.0.1:8081: Connection refused``: the address once (asyncio's
    own text repeats it) and the system's reason."""
    if isinstance(err.errno, int) and err.errno > 0:
        reason = os.strerror(err.errno)
    else:
        reason = err.strerror or str(err) or type(err).__name__
    return f"cannot connect to {host}:{port}: {reason}"


async def read_upto(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The first `limit` bytes of `chunks`, reading no further than the chunk that reaches
    `limit`."""
    parts, size = [], 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def _key(url: httpx.URL) -> _Key:
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
    return (scheme, url.host, url.port or (443 if scheme == "https" else 80))


def encode_request(
    method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The request line, `headers` and `body` in one buffer; the body is always sent with its
    Content-Length (a Transfer-Encoding header is dropped, a Content-Length one corrected).
    `httpx.LocalProtocolError` for a header holding CR, LF or NUL."""
    lines = [method.encode("ascii"), b" ", target or b"/", b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in headers:
        if _UNSAFE.search(name) or _UNSAFE.search(value):  # would end the header early
            raise httpx.LocalProtocolError(
                f"header {name.decode('latin-1')!r} holds a line break or NUL; not sent"
            )
        low = name.lower()
        if low == b"transfer-encoding":
            continue  # the body is in memory: always sent with its length
        if low == b"content-length":
            has_length = True
            value = str(len(body)).encode("ascii")
        lines += [name, b": ", value, b"\r\n"]
    if not has_length and (body or method not in ("GET", "HEAD", "DELETE", "OPTIONS")):
        lines += [b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n"]
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
