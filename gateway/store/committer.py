"""Group commit for SQLite: one thread owns the connection and commits many operations at once.

Callers submit functions of a `sqlite3.Connection`. The thread takes everything queued, runs
the operations in one transaction (when one fails, the transaction is rolled back and the group
run again with each operation inside its own SAVEPOINT, so one failing operation does not undo
the others), then COMMITs the whole group once, so N concurrent requests cost one fsync, not N.
A caller's future resolves only after that COMMIT returned, i.e. after the data is durable
(``synchronous=FULL``). If the COMMIT fails, every operation of the group fails with
`StoreError` and none of it is stored.

Bookkeeping writes (``run(fn, sync=False)``: delivery claims, attempt outcomes, lease
hand-backs) need not reach the disk before their caller goes on: a group made only of them
commits with ``synchronous=NORMAL``, which in WAL mode skips the fsync but survives a crash of
the process (the frames are in the operating system's cache). Only a power loss or a kernel
crash can undo such a commit, and then the delivery is tried again, as after any crash between
sending and recording (at least once; receivers drop repeats by ``webhook-id``). The next
``FULL`` commit on the file fsyncs the whole WAL, those frames included. With two processes on
one file this matters: the fsync is made while holding the writers' lock, so a delivery
process's bookkeeping held intake's commits back by one fsync per group.

Several processes on one database file (Sanic workers, the CLI) take turns through `lock_path`:
an exclusive ``flock`` held from BEGIN to COMMIT of every group that writes. SQLite's own busy
handler would also serialise them, but it waits by sleeping with a growing back-off (up to
100 ms a try), so under steady writes from two processes one of them kept losing: acks took
seconds and some requests ran out of the busy timeout. A blocked ``flock`` wakes as soon as the
holder lets go. The lock is only held around a transaction, whose own waits are bounded by the
busy timeout; a process that dies releases it with its file descriptors.

`write_failure` says whether the store can commit: why the latest group that wrote failed for
lack of storage (disk full, I/O error, read-only file: BEGIN or COMMIT failed, or an operation
failed with such an error), or None once a group that wrote has committed. Readiness reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StoreError

T = TypeVar("T")
MAX_GROUP = 512
#: Primary result codes of failures that come from the storage, not from an operation's logic:
#: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOLFS.
STORAGE_ERRORS = frozenset({8, 10, 13, 14, 22})


@dataclass
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    write: bool
    sync: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class Committer:
    """Owns one SQLite connection on a dedicated thread; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str = "store",
        lock_path: Path | None = None,
    ) -> None:
        self._connect = connect
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"{name}-committer", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._sync_full = True  # the connection's ``synchronous`` setting is FULL
        #: Why the latest group that wrote could not commit, or None (see the module docstring).
        self.write_failure: str | None = None
        #: Groups committed and operations in them, for benchmarks and metrics.
        self.groups = 0
        self.operations = 0

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise StoreError(f"cannot open the store: {self._startup_error}")

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], write: bool = True, sync: bool = True
    ) -> T:
        """Run `fn(conn)` in the next group; for writes, return once the group is committed.
        `sync` False: a bookkeeping write, committed without fsync when its whole group is
        (see the module docstring)."""
        return await self.submit(fn, write, sync)

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], write: bool = True, sync: bool = True
    ) -> asyncio.Future[T]:
        """`run` without the coroutine: the future of `fn`'s result, resolved on the calling
        event loop once the group is committed. Cancelling the future does not take `fn` back
        (it may have run already); its result is then dropped."""
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, write, sync, future, loop))
        return future

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as e:
            self._startup_error = e
            self._ready.set()
            return
        if self._lock_path is not None:
            try:
                # Read-only is enough for flock, so a lock file another user created still opens.
                self._lock_fd = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as e:
                conn.close()
                self._startup_error = e
                self._ready.set()
                return
        self._ready.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    break
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        op = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stop = True
                        break
                    group.append(op)
                self._commit_group(conn, group)
                if stop:
                    break
        finally:
            conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            # Anything still queued after close fails instead of hanging its caller.
            while True:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is not None:
                    _resolve([(op, StoreError("the store is closed"))])

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        writes = any(op.write for op in group)
        if not writes or self._lock_fd is None:
            self._transaction(conn, group, writes)
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks with the GIL released
        try:
            self._transaction(conn, group, writes)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _transaction(self, conn: sqlite3.Connection, group: list[_Op], writes: bool) -> None:
        try:
            if writes:
                full = any(op.write and op.sync for op in group)
                if full != self._sync_full:
                    conn.execute("PRAGMA synchronous=FULL" if full else "PRAGMA synchronous=NORMAL")
                    self._sync_full = full
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        except sqlite3.Error as e:
            self._failed(writes, e)
            _resolve([(op, StoreError(f"cannot begin a transaction: {e}")) for op in group])
            return
        # Optimistically run the group without a SAVEPOINT per operation: almost every group
        # succeeds, and the two extra statements per operation cost the committer thread (and
        # the GIL the request handlers need) more than the operations themselves. If any
        # operation fails, the whole transaction is rolled back and the group is run again,
        # each operation in its own SAVEPOINT, so that one failure undoes nothing else.
        storage: list[str] = []  # failures of operations that came from the storage
        results = self._run_ops(conn, group, False, storage)
        if results is None:
            try:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._failed(writes, e)
                _resolve([(op, StoreError(f"cannot retry the group: {e}")) for op in group])
                return
            results = self._run_ops(conn, group, True, storage)
            assert results is not None
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._failed(writes, e)
            _resolve([(op, StoreError(f"cannot commit: {e}")) for op in group])
            return
        if writes:
            self.write_failure = storage[0] if storage else None
        self.groups += 1
        self.operations += len(group)
        _resolve(results)

    def _failed(self, writes: bool, error: sqlite3.Error) -> None:
        if writes:
            self.write_failure = str(error) or type(error).__name__

    @staticmethod
    def _run_ops(
        conn: sqlite3.Connection, group: list[_Op], isolated: bool, storage: list[str]
    ) -> list[tuple[_Op, Any]] | None:
        """Each operation's result or error. Not `isolated`: None as soon as one fails (the
        transaction then holds partial work and must be rolled back). Failures that come from
        the storage (`STORAGE_ERRORS`) are also appended to `storage`."""
        results: list[tuple[_Op, Any]] = []
        for op in group:
            if not isolated:
                try:
                    results.append((op, op.fn(conn)))
                except BaseException:  # run again isolated, where it is reported
                    return None
                continue
            try:
                conn.execute("SAVEPOINT op")
                value = op.fn(conn)
                conn.execute("RELEASE op")
                results.append((op, value))
            except BaseException as e:  # even SystemExit must not strand the group's callers
                try:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                except sqlite3.Error:
                    pass
                err = e if not isinstance(e, sqlite3.Error) else StoreError(f"store error: {e}")
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) in STORAGE_ERRORS:
                    storage.append(str(e))
                results.append((op, err))
        return results


def _resolve(results: list[tuple[_Op, Any]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any]]] = {}
    for op, value in results:
        by_loop.setdefault(op.loop, []).append((op, value))
    for loop, items in by_loop.items():
        # A closed loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set_all, items)


def _set_all(items: list[tuple[_Op, Any]]) -> None:
    for op, value in items:
        if op.future.done():
            continue
        if isinstance(value, BaseException):
            op.future.set_exception(value)
        else:
            op.future.set_result(value)
