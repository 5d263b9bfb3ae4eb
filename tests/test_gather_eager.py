"""gateway.routing.eager: gather_eager behaves as asyncio.gather(return_exceptions=True), without
a task for a coroutine that never waits."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from gateway.routing.eager import gather_eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


async def returns(value: Any) -> Any:
    return value


async def raises(error: BaseException) -> Any:
    raise error


async def waits_then(fut: asyncio.Future[Any], then: Any) -> Any:
    got = await fut
    if isinstance(then, BaseException):
        raise then
    return (got, then)


async def test_results_come_in_order_whether_each_waited_or_not() -> None:
    loop = asyncio.get_running_loop()
    late: asyncio.Future[str] = loop.create_future()
    failing: asyncio.Future[str] = loop.create_future()
    loop.call_soon(late.set_result, "late")
    loop.call_soon(failing.set_exception, KeyError("from a future"))
    boom = ValueError("at once")
    after = RuntimeError("after waiting")
    results = await gather_eager(
        [
            returns(1),
            waits_then(late, "a"),
            raises(boom),
            waits_then(failing, "never"),
            returns(5),
            waits_then(late, after),
        ]
    )
    assert results[0] == 1 and results[1] == ("late", "a") and results[2] is boom
    assert isinstance(results[3], KeyError) and results[4] == 5 and results[5] is after


async def test_coroutines_that_wait_run_concurrently() -> None:
    first, second = asyncio.Event(), asyncio.Event()

    async def ping() -> str:
        first.set()
        await second.wait()
        return "ping"

    async def pong() -> str:
        await first.wait()
        second.set()
        return "pong"

    assert await asyncio.wait_for(gather_eager([ping(), pong()]), 5) == ["ping", "pong"]


async def test_bare_yields_go_on_on_the_next_turns() -> None:
    async def turns(n: int) -> int:
        for _ in range(n):
            await asyncio.sleep(0)
        return n

    assert await gather_eager([turns(3), turns(0), turns(1)]) == [3, 0, 1]


async def test_a_coroutine_that_never_waits_gets_no_task() -> None:
    loop = asyncio.get_running_loop()
    made: list[Any] = []
    default = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counting)
    try:
        ready: asyncio.Future[int] = loop.create_future()
        loop.call_soon(ready.set_result, 7)
        assert await gather_eager([returns(1), returns(2), waits_then(ready, 3)]) == [1, 2, (7, 3)]
    finally:
        loop.set_task_factory(default)
    assert len(made) == 1, "only the coroutine that waited was handed to a task"


async def test_cancelling_the_caller_cancels_what_still_waits() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def stuck() -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    caller = asyncio.ensure_future(gather_eager([returns(1), stuck()]))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert seen == ["cancelled"]
    assert never.cancelled(), "the future it waited on is cancelled, as a Task does"


async def test_each_coroutine_has_its_own_context() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    loop.call_soon(gate.set_result, None)

    async def sets(value: str) -> str:
        VAR.set(value)
        await gate
        return VAR.get()

    assert await gather_eager([sets("one"), sets("two"), returns(VAR.get())]) == [
        "one",
        "two",
        "caller",
    ]
    assert VAR.get() == "caller", "nothing a coroutine set leaks into the caller"


async def test_cancelling_the_caller_reaches_a_coroutine_already_driven_by_its_task() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()
    deep = asyncio.Event()
    seen: list[str] = []

    async def waits_twice() -> None:
        await asyncio.sleep(0)  # handed to its task here
        deep.set()
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    caller = asyncio.ensure_future(gather_eager([waits_twice()]))
    await asyncio.wait_for(deep.wait(), 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert seen == ["cancelled"] and never.cancelled()
