"""Group concurrent store calls of one kind into one script call (the Redis store's group commit).

Every `ingest`, `finish_event`, `finish_attempt` and `advance_mark` used to cost its own
EVALSHA: a pooled connection, a round trip and redis-py's per-command overhead, which capped one
gateway at a few hundred requests a second while Redis itself idled. A `Batcher` queues the
calls made while a script of its kind is on the wire (and those made in the same event-loop tick
as the first one) and sends them as ONE script call whose ARGV is ``prefix, number of calls,
call 1's arguments, call 2's arguments...``. The script handles the calls one after the other,
each checked and then written on its own inside ``pcall``, and returns one result per call, so:

- a call is exactly as atomic as before: Redis runs the whole script before serving any other
  client (dedupe stays atomic across instances), and a call whose checks fail writes nothing
  and fails alone (``"!" .. message`` in its slot becomes its `StoreError`);
- a caller's future resolves only after Redis answered the script, i.e. applied the writes
  (with ``appendfsync always``: after the AOF was fsynced; one fsync now covers the group);
- when the script call itself fails (connection lost, timeout), every call of the group fails
  with `StoreError`; as before, the caller cannot know whether Redis applied it.

One group of a kind is in flight at a time per store object; a group holds at most
`MAX_CALLS` calls and about `MAX_ARGS` arguments (a larger single call goes alone).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import StoreError

MAX_CALLS = 512
MAX_ARGS = 50_000

Send = Callable[[list[Any]], Awaitable[list[Any]]]


class Batcher:
    """Queues calls (each a list of script arguments) and sends them in groups through `send`,
    which receives ``[number of calls, *arguments of every call]`` and returns one result per
    call. `call` returns that call's result or raises `StoreError`."""

    def __init__(self, name: str, send: Send) -> None:
        self.name = name
        self._send = send
        self._queue: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None
        #: Groups sent and calls in them, for benchmarks and tests.
        self.groups = 0
        self.calls = 0

    async def call(self, args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if self._task is None:
            # Starts on the next loop iteration: the calls of this tick join the first group.
            self._task = loop.create_task(self._drain(), name=f"redis-batch:{self.name}")
        return await future

    async def wait_idle(self) -> None:
        """Return once everything queued so far has been sent and answered."""
        while self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._take()
                flat: list[Any] = [len(group)]
                for args, _ in group:
                    flat += args
                try:
                    results = await self._send(flat)
                except StoreError as e:
                    _fail(group, str(e))
                    continue
                except Exception as e:  # a bug must not strand the callers
                    _fail(group, f"{type(e).__name__}: {e}")
                    continue
                except BaseException as e:  # cancelled (loop closing): nobody is answered
                    _fail(group, f"{type(e).__name__}: the store was shut down")
                    raise
                self.groups += 1
                self.calls += len(group)
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():  # the caller was cancelled
                        continue
                    if isinstance(result, str) and result.startswith("!"):
                        future.set_exception(StoreError(f"redis: {result[1:]}"))
                    else:
                        future.set_result(result)
        finally:
            self._task = None
            if self._queue:  # only after a cancellation: fail the rest instead of hanging
                rest, self._queue = self._queue, []
                _fail(rest, "the store was shut down")

    def _take(self) -> list[tuple[list[Any], asyncio.Future[Any]]]:
        size, n = 0, 0
        for args, _ in self._queue:
            if n and (n >= MAX_CALLS or size + len(args) > MAX_ARGS):
                break
            size += len(args)
            n += 1
        group, self._queue = self._queue[:n], self._queue[n:]
        return group


def _fail(group: list[tuple[list[Any], asyncio.Future[Any]]], message: str) -> None:
    for _, future in group:
        if not future.done():
            future.set_exception(StoreError(message))
