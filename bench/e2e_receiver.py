"""The end-to-end benchmark's webhook receiver: answers 200 and measures delivery latency.

    python bench/e2e_receiver.py [PORT]     # prints "listening PORT", then serves on 127.0.0.1

Every POST body is expected to contain ``"sent_at":<epoch seconds>`` (the load generator's
wall-clock time just before it posted the callback; bench/intake_post.lua puts it there and
``payload: original`` forwards it byte for byte). Arrival time minus ``sent_at`` is the
end-to-end latency: intake, durable commit, routing, queueing and the delivery request.

Control (same port): ``GET /stats`` answers JSON ``{"count", "first", "last", "p50_ms",
"p99_ms", "paths"}`` for everything received since the last ``POST /reset``.

A raw asyncio protocol (uvloop when installed), so that the receiver costs little of the CPU
the gateway needs; it is not a general HTTP server (no chunked bodies, no pipelining quirks
beyond back-to-back requests on one connection). Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from loopback_receiver import run, serve

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
MARK = b'"sent_at":'


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.paths: dict[str, int] = {}

    def add(self, path: bytes, body: bytes, at: float) -> None:
        self.count += 1
        if not self.first:
            self.first = at
        self.last = at
        key = path.decode("latin-1")
        self.paths[key] = self.paths.get(key, 0) + 1
        i = body.find(MARK)
        if i >= 0:
            j = i + len(MARK)
            end = j
            while end < len(body) and body[end] in b" 0123456789.eE+-":
                end += 1
            with contextlib.suppress(ValueError):
                self.latencies.append(at - float(body[j:end]))

    def report(self) -> bytes:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else None

        return json.dumps(
            {
                "count": self.count,
                "first": self.first,
                "last": self.last,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "timed": len(lat),
                "paths": self.paths,
            }
        ).encode()


STATS = Stats()


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.head: bytes | None = None
        self.need = 0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
                self.need = 0
                for line in self.head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        self.need = int(value)
            if len(self.buffer) < self.need:
                return
            body, self.buffer = self.buffer[: self.need], self.buffer[self.need :]
            method, path = self.head.split(b" ", 2)[:2]
            self.head = None
            self.answer(method, path, body)

    def answer(self, method: bytes, path: bytes, body: bytes) -> None:
        if path == b"/stats":
            out = STATS.report()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(out)).encode()
                + b"\r\n\r\n"
                + out
            )
        elif path == b"/reset":
            STATS.reset()
            self.transport.write(OK)
        else:
            STATS.add(path, body, time.time())
            self.transport.write(OK)


async def main(port: int) -> None:
    await serve(Http, port)


if __name__ == "__main__":
    run(main)
