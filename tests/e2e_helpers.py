"""Helpers shared by the end-to-end test modules that drive a real gateway subprocess."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from receiver import Receiver, Reply


def event(**fields: Any) -> dict[str, Any]:
    """A valid `delivered` callback with a fresh message_uuid; `fields` override or add."""
    base: dict[str, Any] = {
        "message_uuid": str(uuid.uuid4()),
        "channel_type": "SMS",
        "callback_event": "delivered",
        "status": "delivered",
        "status_time": "2020-10-16T18:51:13Z",
    }
    base.update(fields)
    return base


def status(name: str = "delivered") -> dict[str, Any]:
    """A valid status callback whose event and status are both `name` (sent, read, ...)."""
    return event(callback_event=name, status=name)


def body(*events: dict[str, Any]) -> bytes:
    """A request body: the provider always sends an array."""
    return json.dumps(list(events)).encode()


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
