"""Helpers shared by the end-to-end test modules that drive a real gateway subprocess."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from receiver import Receiver, Reply


def status(event: str = "delivered") -> dict[str, Any]:
    """A valid provider status callback with a fresh message_uuid."""
    return {
        "message_uuid": str(uuid.uuid4()),
        "channel_type": "SMS",
        "callback_event": event,
        "status": event,
        "status_time": "2020-10-16T18:51:13Z",
    }


def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """Poll `check` until it returns something truthy (an outcome, not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)  # polling for an outcome, bounded by the deadline


class ThreadedReceiver:
    """`receiver.Receiver` on its own event loop in a thread, so it outlives each test and can
    serve a gateway shared by a module. Entering yields the `Receiver` itself; `default` is
    its answer to every request until a test says otherwise."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default

    def __enter__(self) -> Receiver:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> Receiver:
            return await Receiver(self.default).start()

        self.rx = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        return self.rx

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.rx.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
