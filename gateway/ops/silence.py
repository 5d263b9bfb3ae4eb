"""The silence alarm: tell someone when the provider stops calling, and when it resumes.

For every source with ``expect_within``, a watcher in each gateway process compares the last
time the source received anything (shared between processes through a store mark) with the
clock. After ``expect_within`` without traffic it raises one ``source_silent`` event into that
source, routed like any other event (for example to Slack); when traffic returns, one
``source_resumed`` event. The events carry dedupe keys derived from the silent period, so several
processes raise each one exactly once.

Event fields: ``callback_event`` (``source_silent`` / ``source_resumed``), ``source``,
``last_received_at`` (ISO 8601), ``silent_seconds``, ``expect_within`` (seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

from gateway.clock import Clock
from gateway.errors import StoreError
from gateway.store import IncomingEvent, Store

log = logging.getLogger("gateway.ops.silence")

SILENT, RESUMED = "source_silent", "source_resumed"
#: The alarm's state (last traffic, silence since) is the gateway's own: never purged.
GATEWAY = "gateway"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rank(ts: float) -> str:
    return f"{ts:020.3f}"


async def silent_since(store: Store, source: str) -> float | None:
    """When `source` went silent (the last traffic before the alarm), or None when no silence
    alarm is raised for it now."""
    alarm = await store.get_mark(f"silence:{source}", scope=GATEWAY)
    return float(alarm[1]) if alarm and alarm[1] else None


class SilenceWatcher:
    """See the module docstring. `seen(source, now)` is called by intake after each commit."""

    def __init__(self, store: Store, clock: Clock, expect: dict[str, float]) -> None:
        self.store = store
        self.clock = clock
        self.expect = expect
        self._local: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def seen(self, source: str, now: float) -> None:
        if source in self.expect:
            self._local[source] = now

    async def start(self) -> None:
        if not self.expect:
            return
        now = self.clock.now()
        for source in self.expect:  # a fresh gateway counts its start as the last traffic
            await self.store.advance_mark(
                f"last-seen:{source}", _rank(0), str(now), now, scope=GATEWAY
            )
        self._task = asyncio.create_task(self._loop(), name="silence")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def interval(self) -> float:
        return max(1.0, min(60.0, min(self.expect.values()) / 4))

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except StoreError as e:
                log.warning("silence alarm: store unavailable: %s", e)
            await self.clock.sleep(self.interval())

    async def check(self) -> list[str]:
        """One pass over every watched source; returns the events this call raised (for tests)."""
        now = self.clock.now()
        raised = []
        for source, within in self.expect.items():
            key = f"last-seen:{source}"
            if source in self._local:
                local = self._local[source]
                await self.store.advance_mark(key, _rank(local), str(local), now, scope=GATEWAY)
            mark = await self.store.get_mark(key, scope=GATEWAY)
            last = float(mark[1]) if mark else now
            alarm = await self.store.get_mark(f"silence:{source}", scope=GATEWAY)
            silent_since = float(alarm[1]) if alarm and alarm[1] else None
            if silent_since is None and now - last >= within:
                advanced, _ = await self.store.advance_mark(
                    f"silence:{source}", _rank(last), str(last), now, scope=GATEWAY
                )
                if advanced and await self._raise(source, SILENT, last, now, within):
                    raised.append(SILENT)
            elif silent_since is not None and last > silent_since:
                await self.store.set_mark(
                    f"silence:{source}", "", now, rank=_rank(silent_since), scope=GATEWAY
                )
                if await self._raise(source, RESUMED, silent_since, now, within):
                    raised.append(RESUMED)
        return raised

    async def _raise(self, source: str, kind: str, last: float, now: float, within: float) -> bool:
        """Ingest one alarm event; False when another process already raised it (a duplicate)."""
        body = {
            "callback_event": kind,
            "source": source,
            "last_received_at": _iso(last),
            "silent_seconds": round(now - last, 3),
            "expect_within": within,
        }
        item = IncomingEvent(json.dumps(body), f"gateway:{kind}:{_rank(last)}", None, kind)
        result = await self.store.ingest(source, [item], now)
        if result.accepted and kind == SILENT:
            log.warning("source=%s %s: nothing received since %s", source, kind, _iso(last))
        elif result.accepted:
            log.info(
                "source=%s %s: traffic is back after silence since %s", source, kind, _iso(last)
            )
        return bool(result.accepted)
