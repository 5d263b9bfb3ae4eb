"""Connections for the PostgreSQL store: a small pool that fails fast, and a listener.

Why not psycopg-pool: its pool refills broken connections in the background with a back-off
that doubles from one second without bound, and a caller waits for one of those refills up to
the pool's timeout. After an outage the gateway should answer 503 at once (the provider
resends) and serve again on the first request after PostgreSQL is back; here a caller that
finds no idle connection opens one itself (``connect_timeout`` bounds it), and a connection
found broken empties the idle list, since a restart or ``pg_terminate_backend`` ends them all.

`Pool.run(fn)` is the one way the store talks to PostgreSQL: `fn(conn)` runs on a connection in
autocommit mode (a single statement is its own transaction) or inside ``conn.transaction()``;
psycopg and connection errors become `StoreError`. Some failures are run again, at most
`RETRIES` tries in all: a deadlock or serialization failure (rolled back), and a connection
found broken. Inside a transaction, a broken connection before COMMIT was sent is run again
and a COMMIT whose answer was lost is not (it may have committed: the caller gets
`StoreError`; an intake caller answers 503, safe since the provider's resend is then a
duplicate). In autocommit mode a statement on a broken connection is run again: almost always
the connection was dead before the statement was sent (an idle connection PostgreSQL ended),
but if it died after the statement committed, the statement runs twice; so autocommit is for
statements that are safe to repeat (reads, claims, idempotent writes, and the ingest group,
which checks, see `postgres_ingest`); the others use a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from gateway.errors import StoreError

log = logging.getLogger("gateway.store")
T = TypeVar("T")

#: Tries of one operation when a try cannot have committed (see the module docstring).
RETRIES = 3
#: Seconds libpq may take to connect, unless the URL says (``connect_timeout``).
CONNECT_TIMEOUT = 5
#: Query parameters the gateway reads itself; everything else goes to libpq untouched.
GATEWAY_PARAMS = ("pool_size",)
CHANNEL = "callback_gateway"


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``(conninfo for libpq, gateway parameters)`` from a ``postgresql://`` URL: the URL
    minus `GATEWAY_PARAMS`, with ``connect_timeout`` added when absent."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in GATEWAY_PARAMS}
    rest = [(k, v) for k, v in query if k not in GATEWAY_PARAMS]
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", str(CONNECT_TIMEOUT)))
    # quote, not urlencode's default quote_plus: libpq decodes %20 but takes '+' literally.
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote))), ours


def describe(e: BaseException) -> str:
    """One line for a psycopg error (libpq messages may span lines; they hold no password)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"postgresql: {text}"


def _retryable(e: BaseException, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    if isinstance(e, pg_errors.DeadlockDetected | pg_errors.SerializationFailure):
        return True
    # A connection that broke in use (not one that could not be opened: trying again at once
    # would only wait for the same timeout again).
    return isinstance(e, psycopg.OperationalError) and conn is not None and conn.broken


class Pool:
    """At most `size` connections in use; idle ones are kept for reuse. See the module
    docstring for the failure behaviour."""

    def __init__(self, conninfo: str, size: int = 10) -> None:
        self._conninfo = conninfo
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self.size = size

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        # An acknowledgement must mean durable: a server or role default of `off` would
        # acknowledge commits that a crash can still lose. Stronger settings stay as they are.
        cur = await conn.execute("SHOW synchronous_commit")
        row = await cur.fetchone()
        if row is not None and row[0] == "off":
            await conn.execute("SET synchronous_commit = on")
        return conn

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            finally:
                if conn.broken or conn.closed:
                    self._discard_idle()
                if (
                    self._closed
                    or conn.closed
                    or conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    await conn.close()
                else:
                    self._idle.append(conn)

    def _discard_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            task = asyncio.ensure_future(conn.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def run(
        self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], transaction: bool = False
    ) -> T:
        """`fn(conn)`'s result, run in one transaction when `transaction` (else autocommit)."""
        for attempt in range(1, RETRIES + 1):
            conn: psycopg.AsyncConnection[Any] | None = None
            committing = False
            try:
                async with self._connection() as conn:
                    if not transaction:
                        return await fn(conn)
                    async with conn.transaction():
                        result = await fn(conn)
                        committing = True
                    return result
            except StoreError:
                raise
            except (psycopg.Error, OSError) as e:
                if committing or attempt == RETRIES or not _retryable(e, conn):
                    raise StoreError(describe(e)) from e
                log.debug("postgresql: trying again after %s", describe(e))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class Listener:
    """LISTENs on `CHANNEL` on a connection of its own and calls `on_payload(payload)` for each
    notification; after losing the connection it reconnects (every `retry` seconds) and calls
    `on_payload(None)`: notifications may have been missed, look at everything."""

    def __init__(
        self, conninfo: str, on_payload: Callable[[str | None], None], retry: float = 1.0
    ) -> None:
        self._conninfo = conninfo
        self._on_payload = on_payload
        self._retry = retry
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="postgresql-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        lost = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    if lost:
                        log.info("postgresql: listening for other instances' work again")
                        self._on_payload(None)
                    async for notify in conn.notifies():
                        self._on_payload(notify.payload)
            except (psycopg.Error, OSError) as e:
                if not lost:
                    log.warning("postgresql: notifications lost (%s); reconnecting", describe(e))
                lost = True
                self.connected.clear()
            await asyncio.sleep(self._retry)
