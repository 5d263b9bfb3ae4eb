"""A minimal HTTP/1.1 keep-alive receiver for benchmarks: answers every request 200, counts them.

    python bench/loopback_receiver.py [PORT]     # prints "listening PORT", then serves

Deliberately cheap (raw asyncio protocol, uvloop when installed) so that a benchmark measures
the sender, not the receiver. Not a test helper: tests use tests/receiver.py.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Counter:
    requests = 0


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.need: int | None = None  # body bytes still to come

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4 :]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.need = length
            if len(self.buffer) < self.need:
                return
            self.buffer = self.buffer[self.need :]
            self.need = None
            Counter.requests += 1
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def serve(protocol: Callable[[], asyncio.Protocol], port: int) -> None:
    """Serve `protocol` on 127.0.0.1:`port` (0: any free port), print ``listening PORT``, and
    return on SIGTERM or SIGINT. Shared with bench/e2e_receiver.py."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


def run(main: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main(PORT))`` on uvloop when installed, PORT from the command line."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))


async def main(port: int) -> None:
    await serve(Http, port)
    print(f"requests {Counter.requests}", flush=True)


if __name__ == "__main__":
    run(main)
