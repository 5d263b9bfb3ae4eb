"""Group commit for the PostgreSQL store: concurrent calls of one kind share a transaction.

Every statement costs a round trip, and psycopg spends about 100 µs of the event loop's CPU on
each; a transaction costs three. So calls that arrive together (many requests' ingests, many
deliveries' attempt outcomes) queue here, and a task takes what is queued and commits it as
one group, with up to `IN_FLIGHT` groups on their way at once: while one waits for its WAL
flush, the calls that arrived meanwhile go out as the next group instead of waiting for the
flush too. A subclass says how a group is taken from the queue (`_take`), committed
(`_commit`) and answered (`_resolve`).

If a group fails for a reason other than the connection, each of its calls is committed again
on its own, so one bad call does not fail the others; if the connection failed, every call of
the group fails with `StoreError`.

`stop` commits what is queued, then later calls fail with `StoreError`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from typing import Any, Generic, Protocol, TypeVar

import psycopg

from gateway.errors import StoreError

#: Groups being committed at once (on as many connections).
IN_FLIGHT = 2
MAX_GROUP = 512


class Call(Protocol):
    """A queued call: its caller awaits `future`."""

    future: asyncio.Future[Any]


C = TypeVar("C", bound=Call)
R = TypeVar("R")


class Groups(abc.ABC, Generic[C, R]):
    """See the module docstring. `name` names the task; `what` the calls, in errors."""

    def __init__(self, name: str, what: str) -> None:
        self._name = name
        self._what = what
        self._queue: list[C] = []
        self._more = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Groups committed and calls in them, for benchmarks.
        self.groups = 0
        self.calls = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Commit what is queued, then stop; later calls fail with `StoreError`."""
        self._closed = True
        self._more.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _enqueue(self, call: C) -> None:
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        self._queue.append(call)
        self._more.set()

    def _take(self, queue: list[C]) -> tuple[list[C], list[C]]:
        """(the next group, what stays queued); `queue` is not empty. The group may be empty
        when every queued call must wait for a group in flight: the queue is looked at again
        when one ends."""
        return queue[:MAX_GROUP], queue[MAX_GROUP:]

    @abc.abstractmethod
    async def _commit(self, group: list[C]) -> R:
        """Commit `group` in one transaction; raises `StoreError` if it did not commit."""

    @abc.abstractmethod
    def _resolve(self, call: C, result: R) -> None:
        """Answer `call` (its future is not done) from its committed group's `result`."""

    async def _commit_group(self, group: list[C]) -> None:
        try:
            result = await self._commit(group)
        except StoreError as e:
            if len(group) == 1 or isinstance(e.__cause__, psycopg.OperationalError):
                for call in group:
                    fail(call.future, e)
                return
            for call in group:  # one bad call must not fail the others: each on its own
                await self._commit_group([call])
            return
        except BaseException as e:  # a bug: fail the callers instead of stranding them
            for call in group:
                fail(call.future, StoreError(f"{self._what} failed: {type(e).__name__}: {e}"))
            if not isinstance(e, Exception):
                raise
            return
        self.groups += 1
        self.calls += len(group)
        for call in group:
            if not call.future.done():
                self._resolve(call, result)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()
            self._more.set()  # calls held back by this group (see `_take`) may go now

        while True:
            await self._more.wait()
            self._more.clear()
            while self._queue:
                await slots.acquire()
                group, self._queue = self._take(self._queue)
                if not group:
                    slots.release()
                    break
                task = asyncio.create_task(self._commit_group(group))
                running.add(task)
                task.add_done_callback(done)
            if self._closed and not self._queue:
                await asyncio.gather(*running, return_exceptions=True)
                return


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail a call's `future` unless its caller is gone."""
    if not future.done():
        future.set_exception(error)
