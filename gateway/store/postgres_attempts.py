"""Group commit of `finish_attempt` calls for the PostgreSQL store.

Every delivery try ends with its outcome recorded: the attempt row and the delivery's new
state. Alone, that is a transaction of its own (three round trips: the statement is not safe
to repeat, see `postgres_conn`). Tries finishing together queue here (`postgres_groups`) and a
group is recorded by one statement (`postgres_sql.FINISH_ATTEMPTS`) in one transaction. A
delivery's outcomes are recorded one after the other, as alone: a second outcome for a delivery
whose first is queued or on its way waits until that one's group has ended, so each attempt is
numbered after its delivery's last one and the later outcome sets its state.

Each caller's future resolves after the group's COMMIT. A group that fails for a reason other
than the connection is recorded again call by call (`FINISH_ATTEMPT`); one whose connection
failed fails every call with `StoreError` and, as for one call alone, the deliveries' leases
run out and they are tried again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.store.postgres_conn import Pool
from gateway.store.postgres_groups import MAX_GROUP, Groups
from gateway.store.postgres_sql import FINISH_ATTEMPT, FINISH_ATTEMPTS, floats

#: `FINISH_ATTEMPT`'s parameters, in `FINISH_ATTEMPTS`'s column order.
COLUMNS = (
    "id",
    "started",
    "finished",
    "outcome",
    "status",
    "error",
    "details",
    "state",
    "next",
    "counts",
    "now",
)

FLOAT_COLUMNS = ("started", "finished", "next", "now")


@dataclass
class _Call:
    args: dict[str, Any]  # `FINISH_ATTEMPT`'s parameters
    future: asyncio.Future[None]


class AttemptGroups(Groups[_Call, None]):
    """See the module docstring."""

    def __init__(self, pool: Pool) -> None:
        super().__init__("postgresql-attempts", "recording the try")
        self._pool = pool
        #: Deliveries with an outcome in a group on its way.
        self._busy: set[str] = set()

    async def submit(self, args: dict[str, Any]) -> None:
        """Record one try (`FINISH_ATTEMPT`'s parameters); returns once committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(args, future))
        await future

    def _take(self, queue: list[_Call]) -> tuple[list[_Call], list[_Call]]:
        group: list[_Call] = []
        seen: set[str] = set()
        rest: list[_Call] = []
        for call in queue:
            delivery = call.args["id"]
            if len(group) < MAX_GROUP and delivery not in seen and delivery not in self._busy:
                group.append(call)
            else:
                rest.append(call)
            seen.add(delivery)  # a later outcome of it never overtakes this one
        self._busy.update(call.args["id"] for call in group)
        return group, rest

    async def _commit_group(self, group: list[_Call]) -> None:
        try:
            await super()._commit_group(group)
        finally:
            self._busy.difference_update(call.args["id"] for call in group)

    async def _commit(self, group: list[_Call]) -> None:
        if len(group) == 1:
            args = group[0].args
            await self._pool.run(lambda c: c.execute(FINISH_ATTEMPT, args), transaction=True)
            return
        columns: list[list[Any]] = [[call.args[name] for call in group] for name in COLUMNS]
        for name in FLOAT_COLUMNS:
            i = COLUMNS.index(name)
            columns[i] = floats(columns[i])
        await self._pool.run(lambda c: c.execute(FINISH_ATTEMPTS, columns), transaction=True)

    def _resolve(self, call: _Call, result: None) -> None:
        call.future.set_result(None)
