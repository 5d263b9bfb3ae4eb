"""A real HTTP receiver on loopback for delivery tests, scriptable per request.

    async with Receiver() as rx:
        rx.script(Reply(500), Reply(200))          # next requests, in order; then `default`
        rx.script(Reply(429, headers={"Retry-After": "120"}), path="/slow")
        ... deliver to rx.url + "/hook" ...
        await rx.wait_for(2)
        rx.requests[0].headers["webhook-id"], rx.requests[0].body

`Reply(stall=s)` answers after `s` seconds (``math.inf``: never, until the receiver closes).
Every request is recorded on arrival, before any stall. Runs in the test's own event loop
(aiohttp.web bound to 127.0.0.1:0).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    #: Put the request's headers into the body (to check what a caller would store).
    echo_headers: bool = False
    #: Put the request line (method, path and query) and its headers into the body, as a
    #: misbehaving receiver that echoes its request into an error answer would.
    echo_request: bool = False


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply(200, b'{"ok":true}')
        self.requests: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._scripts: dict[str | None, deque[Reply]] = {}
        self._arrived = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, *replies: Reply, path: str | None = None) -> None:
        """Answer the next requests (to `path`, or any path) with `replies`, in order."""
        self._scripts.setdefault(path, deque()).extend(replies)

    def _next(self, path: str) -> Reply:
        for key in (path, None):
            queue = self._scripts.get(key)
            if queue:
                return queue.popleft()
        return self.default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self._arrived:
            self.requests.append(
                Received(
                    request.method,
                    request.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    body,
                    time.time(),
                )
            )
            self._arrived.notify_all()
        reply = self._next(request.path)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.stall:
                timeout = None if math.isinf(reply.stall) else reply.stall
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), timeout)
            payload: Any = reply.body
            if reply.echo_headers:
                payload = repr(dict(request.headers))
            if reply.echo_request:
                head = f"{request.method} {request.path_qs} HTTP/1.1\n"
                payload = head + "".join(f"{k}: {v}\n" for k, v in request.headers.items())
            return web.Response(status=reply.status, body=payload, headers=reply.headers)
        finally:
            self.in_flight -= 1

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:  # noqa: ASYNC109
        """Wait until at least `n` requests arrived; return them all."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= n), timeout)
        return self.requests

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ReceiverThread:
    """A `Receiver` on its own event loop in a thread, for tests that block (subprocesses).

    with ReceiverThread(Reply(200, stall=0.3)) as rx:
        ... rx.url, rx.requests, rx.set_default(Reply(200)), rx.wait_for(n, timeout) ...
    """

    def __init__(self, default: Reply | None = None) -> None:
        self.receiver = Receiver(default)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ReceiverThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def requests(self) -> list[Received]:
        return list(self.receiver.requests)

    def set_default(self, reply: Reply) -> None:
        self._loop.call_soon_threadsafe(setattr, self.receiver, "default", reply)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        future = asyncio.run_coroutine_threadsafe(self.receiver.wait_for(n, timeout), self._loop)
        return list(future.result(timeout + 1))
