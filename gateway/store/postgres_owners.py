"""Proof that a lease owner is dead, for the PostgreSQL store (`Store.adopt_owner`).

Every gateway process that claims work holds a session advisory lock named after its lease
owner id (``host:pid``) on a connection of its own, for as long as its store is open, and is
registered in ``gateway_marks`` (key ``owner:<id>``). PostgreSQL drops a session's locks when
the session ends, however the process died, so a process that can take a *registered* owner's
lock knows that owner is gone, and the leases it left can be taken over at once instead of when
they expire. A lock that cannot be taken belongs to a live process. An owner that is not
registered proves nothing (an instance of a release before this scheme, during a rolling
upgrade): its leases expire as before.

The lock lives on a connection, not in the process: if that connection is lost (a PostgreSQL
restart ends them all), the lock is gone until `OwnerSession` reconnects, which it tries every
`KEEPALIVE` seconds. An instance starting in that window takes the owner for dead and resumes
its in-flight deliveries: they may then be sent twice, which receivers already handle
(``webhook-id``), as after any lease that ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

log = logging.getLogger("gateway.store")

#: Seconds between checks that this process's owner lock is still held.
KEEPALIVE = 5.0
#: The ``gateway_marks`` key prefix that registers an owner.
PREFIX = "owner:"
#: The advisory lock key of the owner given as the parameter.
LOCK_KEY = "hashtextextended('callback-gateway owner ' || %s, 0)"


class OwnerSession:
    """This process's owner lock on a connection of its own (see the module docstring)."""

    def __init__(self, conninfo: str, keepalive: float = KEEPALIVE) -> None:
        self._conninfo = conninfo
        self._keepalive = keepalive
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._owner: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._locked = False
        #: Whether this process holds its own owner's lock (False: another live process has
        #: the same owner id, and it proves nothing).
        self.own = False

    async def hold(self, owner: str) -> bool:
        """Take `owner`'s lock, register it, and keep the lock until `release`. False when
        another live session holds it."""
        self._owner = owner
        self.own = await self._lock_own()
        self._task = asyncio.create_task(self._keep(), name="postgresql-owner-lock")
        return self.own

    async def registered(self) -> set[str]:
        """The owners registered as holding a lock while they live."""
        cur = await self._execute(
            "SELECT substr(key, %s) FROM gateway_marks WHERE key LIKE %s",
            (len(PREFIX) + 1, PREFIX + "%"),
        )
        return {row[0] for row in await cur.fetchall()}

    async def take_if_dead(self, owner: str) -> bool:
        """True when `owner` (registered, not this process's) is dead: its lock could be
        taken. The caller frees its leases, then calls `forget`."""
        return await self._try_lock(owner)

    async def forget(self, owner: str) -> None:
        """Unregister a dead `owner` and let go of its lock (taken by `take_if_dead`)."""
        await self._execute("DELETE FROM gateway_marks WHERE key = %s", (PREFIX + owner,))
        await self._execute(f"SELECT pg_advisory_unlock({LOCK_KEY})", (owner,))

    async def release(self) -> None:
        """At a clean stop: unregister this owner (its leases were handed back) and close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            if self._locked and self._owner is not None:
                await self._conn.execute(
                    "DELETE FROM gateway_marks WHERE key = %s", (PREFIX + self._owner,)
                )
        with contextlib.suppress(psycopg.Error):
            await self._conn.close()
        self._conn = None

    async def _execute(self, sql: str, args: Any) -> psycopg.AsyncCursor[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        return await self._conn.execute(sql, args)

    async def _try_lock(self, owner: str) -> bool:
        cur = await self._execute(f"SELECT pg_try_advisory_lock({LOCK_KEY})", (owner,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _lock_own(self) -> bool:
        """Take this owner's lock and (re)register it; False when another session holds it."""
        self._locked = await self._try_lock(str(self._owner))
        if self._locked:
            await self._execute(
                "INSERT INTO gateway_marks (key, rank, value, updated_at)"
                " VALUES (%s, '', '', extract(epoch from now())) ON CONFLICT (key) DO NOTHING",
                (PREFIX + str(self._owner),),
            )
        return self._locked

    async def _keep(self) -> None:
        """Every `keepalive` seconds, check the connection. After losing it, reconnect and
        take the lock again; the same while a finder holds it (it took this process for dead
        while the lock was gone, and unregistered it)."""
        while True:
            await asyncio.sleep(self._keepalive)
            lost = False
            try:
                if self._conn is None or self._conn.closed:
                    lost = True
                else:
                    await self._conn.execute("SELECT 1")
            except psycopg.Error:
                lost = True
            if not lost and (self._locked or not self.own):
                continue
            try:
                if lost and self._conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await self._conn.close()
                    self._conn = None
                if self.own and await self._lock_own():
                    log.warning("postgresql: the owner lock was lost and is held again")
            except (psycopg.Error, OSError) as e:
                log.debug("postgresql: owner lock not taken again yet: %s", e)
