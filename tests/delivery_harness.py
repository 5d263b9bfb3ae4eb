"""A delivery engine on a real SQLite store in tmp_path, with a manual clock, for tests.

async with EngineHarness(tmp_path, CONFIG_YAML) as h:
    [did] = await h.add("crm")
    await h.engine.start()
    record, attempts = await h.until(did, lambda r: r.state == "delivered")
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from manual_clock import ManualClock

from gateway.config import load_config_text
from gateway.delivery.engine import DeliveryEngine
from gateway.destination.base import Services
from gateway.destination.http import make_http_client
from gateway.store import AttemptRecord, DeliveryRecord, IncomingEvent, NewDelivery
from gateway.store.marks import Marks
from gateway.store.sqlite import SQLiteStore, new_delivery_id

SAMPLE = (
    '{"message_uuid": "063474ec-a34f-4558-90c5-984395000004", "channel_type": "SMS",'
    ' "callback_event": "delivered", "status": "delivered",'
    ' "status_time": "2020-10-16T18:51:13Z", "price": 1.10}'
)


class EngineHarness:
    def __init__(
        self,
        tmp_path: Path,
        config: str,
        *,
        extra_plugins: Iterable[object] = (),
        clock: ManualClock | None = None,
        owner: str = "test-1",
        transport: str | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.extra_plugins = list(extra_plugins)
        self.clock = clock or ManualClock(float(int(time.time())))
        self.owner = owner
        self.transport = transport
        self.store = SQLiteStore(tmp_path / "gw.db")

    async def __aenter__(self) -> EngineHarness:
        await self.store.open()
        self.loaded = load_config_text(self.config, env={}, extra_plugins=self.extra_plugins)
        self.http = make_http_client(self.transport)
        self.services = Services(
            self.http, self.clock, Marks(self.store, self.clock), set(self.loaded.secrets)
        )
        self.engine = self.new_engine(self.owner)
        return self

    def new_engine(self, owner: str) -> DeliveryEngine:
        return DeliveryEngine(self.loaded, self.store, self.services, self.clock, owner)

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop(0)
        await self.http.aclose()
        await self.store.close()

    async def add(
        self,
        destination: str,
        n: int = 1,
        raw: str = SAMPLE,
        route: str = "r",
        enrichment: dict[str, Any] | None = None,
    ) -> list[str]:
        """`n` events, each routed to `destination` (one delivery each, due now)."""
        now = self.clock.now()
        ids = []
        fields = json.loads(raw)
        items = [
            IncomingEvent(
                raw, f"k-{uuid.uuid4()}", fields.get("message_uuid"), fields.get("callback_event")
            )
            for _ in range(n)
        ]
        result = await self.store.ingest("revicom", items, now)
        for event_id in result.event_ids:
            did = new_delivery_id(now)
            ids.append(did)
            await self.store.finish_event(
                event_id,
                "routed",
                [NewDelivery(did, event_id, route, destination, now, enrichment or {})],
                now,
            )
        self.engine.wake(destination)
        return ids

    async def get(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]]:
        found = await self.store.get_delivery(delivery_id)
        assert found is not None
        return found

    async def until(
        self,
        delivery_id: str,
        predicate: Callable[[DeliveryRecord], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper's limit
    ) -> tuple[DeliveryRecord, list[AttemptRecord]]:
        """Poll the store (real time) until the delivery satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            record, attempts = await self.get(delivery_id)
            if predicate(record):
                return record, attempts
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last seen: {record} {attempts}")
            await asyncio.sleep(0.01)

    async def advance(self, seconds: float) -> None:
        """Let the engine reach its wait, then move the clock (a wait registered after the
        move would otherwise be measured from the new time)."""
        await self.settle()
        self.clock.advance(seconds)

    async def settle(self) -> None:
        """Let the engine's tasks run (a few loop turns plus a short real pause)."""
        for _ in range(5):
            await asyncio.sleep(0.01)
