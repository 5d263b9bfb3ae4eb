"""Group commit (gateway/store/committer.py): many operations, one transaction, one fsync.

The committer's thread is held on a gate inside a first operation while the others queue up,
so the grouping under test is deterministic rather than a matter of timing.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError
from gateway.store.committer import Committer


class FlakyConnection:
    """A real sqlite3 connection whose listed statements can be made to fail, as a full disk
    or a lost file would make them."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.fail: set[str] = set()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql in self.fail:
            raise sqlite3.OperationalError(f"simulated failure of {sql}")
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def connect_to(path: Path) -> Callable[[], FlakyConnection]:
    def connect() -> FlakyConnection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (name TEXT PRIMARY KEY)")
        return FlakyConnection(conn)

    return connect


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "committer.db"


@pytest.fixture
async def flaky(db: Path) -> AsyncIterator[tuple[Committer, list[FlakyConnection]]]:
    connections: list[FlakyConnection] = []
    connect = connect_to(db)

    def tracked() -> FlakyConnection:
        conn = connect()
        connections.append(conn)
        return conn

    committer = Committer(tracked, name="test")  # type: ignore[arg-type]
    committer.start()
    yield committer, connections
    await committer.stop()


@pytest.fixture
async def committer(flaky: tuple[Committer, list[FlakyConnection]]) -> Committer:
    return flaky[0]


def insert(name: str) -> Callable[[Any], str]:
    def op(conn: Any) -> str:
        conn.execute("INSERT INTO t (name) VALUES (?)", (name,))
        return name

    return op


def stored(db: Path) -> set[str]:
    """What another connection sees: only committed rows."""
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM t")}
    finally:
        conn.close()


async def in_one_group(
    committer: Committer, ops: list[Callable[[Any], Any]], sync: list[bool] | None = None
) -> list[Any]:
    """Run `ops` so that they land in one group: the committer's thread is held inside a first
    operation until every op is queued. Returns each op's result or exception, in order.
    `sync[i]` False makes op i a bookkeeping write."""
    entered, gate = threading.Event(), threading.Event()

    def hold(conn: Any) -> bool:
        entered.set()
        return gate.wait(5)

    groups_before = committer.groups
    blocker = asyncio.ensure_future(committer.run(hold, write=False))
    assert await asyncio.to_thread(entered.wait, 5), "the committer never ran the first op"
    syncs = sync or [True] * len(ops)
    tasks = [
        asyncio.ensure_future(committer.run(op, sync=s)) for op, s in zip(ops, syncs, strict=True)
    ]
    for _ in range(3):
        await asyncio.sleep(0)  # every task runs up to its await: all ops are queued
    gate.set()
    held, *results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert held is True or isinstance(held, StoreError)
    # One group for the held op, at most one more for everything queued behind it.
    assert committer.groups - groups_before <= 2, "the queued ops were not committed together"
    return results


async def test_a_write_is_visible_to_other_connections_when_run_returns(
    committer: Committer,
    db: Path,
) -> None:
    assert await committer.run(insert("a")) == "a"
    assert stored(db) == {"a"}


async def test_reads_return_their_value(committer: Committer) -> None:
    await committer.run(insert("a"))
    rows = await committer.run(lambda c: c.execute("SELECT name FROM t").fetchall(), write=False)
    assert rows == [("a",)]


async def test_many_concurrent_writes_share_few_commits(committer: Committer, db: Path) -> None:
    names = [f"n{i}" for i in range(200)]
    results = await in_one_group(committer, [insert(n) for n in names])
    assert results == names
    assert stored(db) == set(names)
    assert committer.operations == 201  # the 200 writes and the gate
    assert committer.groups == 2  # the held op alone, then all 200 writes together
    assert committer.groups < committer.operations


async def test_many_writes_without_coordination_are_still_grouped(committer: Committer) -> None:
    await asyncio.gather(*(committer.run(insert(f"n{i}")) for i in range(300)))
    assert committer.operations == 300
    assert committer.groups < 300


def insert_seeing_sync(name: str) -> Callable[[Any], int]:
    """Inserts `name` and returns the ``synchronous`` level its transaction commits with
    (1 NORMAL: no fsync at COMMIT; 2 FULL)."""

    def op(conn: Any) -> int:
        conn.execute("INSERT INTO t (name) VALUES (?)", (name,))
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    return op


async def test_a_group_of_bookkeeping_writes_commits_without_fsync(
    committer: Committer, db: Path
) -> None:
    results = await in_one_group(
        committer, [insert_seeing_sync("a"), insert_seeing_sync("b")], sync=[False, False]
    )
    assert results == [1, 1]
    assert stored(db) == {"a", "b"}


async def test_one_durable_write_makes_its_whole_group_fsync(
    committer: Committer, db: Path
) -> None:
    results = await in_one_group(
        committer,
        [insert_seeing_sync("a"), insert_seeing_sync("b"), insert_seeing_sync("c")],
        sync=[False, True, False],
    )
    assert results == [2, 2, 2]
    assert stored(db) == {"a", "b", "c"}


async def test_durable_writes_fsync_again_after_bookkeeping(committer: Committer) -> None:
    assert await committer.run(insert_seeing_sync("a"), sync=False) == 1
    assert await committer.run(insert_seeing_sync("b")) == 2
    assert await committer.run(insert_seeing_sync("c"), sync=False) == 1
    assert await committer.run(insert_seeing_sync("d"), sync=True) == 2


async def test_a_failing_operation_does_not_undo_the_others_in_its_group(
    committer: Committer,
    db: Path,
) -> None:
    def half_then_raise(conn: Any) -> None:
        conn.execute("INSERT INTO t (name) VALUES ('half')")
        raise ValueError("plugin-free logic error")

    def bad_sql(conn: Any) -> None:
        conn.execute("INSERT INTO t (name) VALUES ('also-half')")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results = await in_one_group(
        committer, [insert("a"), half_then_raise, insert("b"), bad_sql, insert("a"), insert("c")]
    )
    assert results[0] == "a" and results[2] == "b" and results[5] == "c"
    assert isinstance(results[1], ValueError), "a non-SQLite error reaches the caller as is"
    assert isinstance(results[3], StoreError), "an SQLite error becomes a StoreError"
    assert isinstance(results[4], StoreError), "a constraint violation becomes a StoreError"
    assert stored(db) == {"a", "b", "c"}


async def test_a_failed_commit_fails_every_operation_of_the_group(
    flaky: tuple[Committer, list[FlakyConnection]],
    db: Path,
) -> None:
    committer, (conn,) = flaky
    await committer.run(insert("before"))
    groups = committer.groups
    conn.fail.add("COMMIT")
    results = await in_one_group(committer, [insert("a"), insert("b"), insert("c")])
    assert all(isinstance(r, StoreError) for r in results), results
    assert all("commit" in str(r) for r in results)
    assert stored(db) == {"before"}
    assert committer.groups == groups, "a failed group is not counted as committed"
    conn.fail.clear()
    assert await committer.run(insert("a")) == "a", "the committer recovers after a failure"
    assert stored(db) == {"before", "a"}


async def test_a_failed_begin_fails_every_operation_of_the_group(
    flaky: tuple[Committer, list[FlakyConnection]],
    db: Path,
) -> None:
    committer, (conn,) = flaky
    conn.fail.add("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="begin"):
        await committer.run(insert("a"))
    conn.fail.clear()
    await committer.run(insert("b"))
    assert stored(db) == {"b"}


async def test_write_failure_names_the_last_failed_write_until_a_write_commits(
    flaky: tuple[Committer, list[FlakyConnection]],
) -> None:
    committer, (conn,) = flaky
    assert committer.write_failure is None
    conn.fail.add("COMMIT")
    with pytest.raises(StoreError):
        await committer.run(insert("a"))
    assert committer.write_failure == "simulated failure of COMMIT"
    conn.fail.clear()
    await committer.run(lambda c: c.execute("SELECT 1").fetchone(), write=False)
    assert committer.write_failure is not None, "a read proves nothing about commits"
    await committer.run(insert("b"))
    assert committer.write_failure is None


async def test_an_operation_failing_for_lack_of_space_counts_as_a_write_failure(
    committer: Committer,
) -> None:
    def disk_full(conn: Any) -> None:
        e = sqlite3.OperationalError("database or disk is full")
        e.sqlite_errorcode = 13  # SQLITE_FULL, as sqlite3 sets it
        raise e

    def logic_error(conn: Any) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    results = await in_one_group(committer, [insert("a"), disk_full])
    assert results[0] == "a" and isinstance(results[1], StoreError)
    assert committer.write_failure == "database or disk is full"
    results = await in_one_group(committer, [insert("b"), logic_error])
    assert isinstance(results[1], StoreError)
    assert committer.write_failure is None, "an operation's own error is not the storage's"


async def test_a_connection_that_cannot_open_fails_start(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    committer = Committer(connect)
    with pytest.raises(StoreError, match="unable to open database file"):
        committer.start()


async def test_a_stopped_committer_refuses_work_and_stops_once(db: Path) -> None:
    committer = Committer(connect_to(db))  # type: ignore[arg-type]
    committer.start()
    await committer.run(insert("a"))
    await committer.stop()
    await committer.stop()
    with pytest.raises(StoreError, match="closed"):
        await committer.run(insert("b"))
    assert stored(db) == {"a"}


async def test_stop_finishes_what_was_queued_before_it(db: Path) -> None:
    committer = Committer(connect_to(db))  # type: ignore[arg-type]
    committer.start()
    tasks = [asyncio.ensure_future(committer.run(insert(f"n{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    await committer.stop()
    assert len(await asyncio.gather(*tasks)) == 20
    assert len(stored(db)) == 20


async def test_a_write_waits_for_the_lock_file_and_goes_on_when_it_is_released(
    tmp_path: Path,
    db: Path,
) -> None:
    # Another process's writer holds the lock (a separate open file: flock conflicts as it
    # would between processes). Our write must not start its transaction until it is released.
    lock_path = tmp_path / "committer.db-lock"
    committer = Committer(connect_to(db), name="test", lock_path=lock_path)  # type: ignore[arg-type]
    committer.start()
    other = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        write = asyncio.ensure_future(committer.run(insert("a")))
        done, _ = await asyncio.wait({write}, timeout=0.5)
        assert not done, "the write did not wait for the other writer's lock"
        assert stored(db) == set()
        fcntl.flock(other, fcntl.LOCK_UN)
        assert await asyncio.wait_for(write, 5) == "a"
        assert stored(db) == {"a"}
        # A group that only reads does not take the lock.
        fcntl.flock(other, fcntl.LOCK_EX)
        rows = await asyncio.wait_for(
            committer.run(lambda c: c.execute("SELECT name FROM t").fetchall(), write=False), 5
        )
        assert rows == [("a",)]
    finally:
        os.close(other)
        await committer.stop()


def _hammer(path: str, prefix: str, count: int, busy_timeout: float) -> None:
    """One process of the test below: `count` ingests of 20 events each, 32 always in flight,
    so that its committer writes back to back on the shared file."""
    import asyncio as aio

    from gateway.store import IncomingEvent
    from gateway.store.sqlite import SQLiteStore

    async def main() -> None:
        store = SQLiteStore(Path(path), busy_timeout=busy_timeout)
        await store.open()
        slots = aio.Semaphore(32)

        async def one(i: int) -> None:
            async with slots:
                items = [
                    IncomingEvent("{}", f"{prefix}{i}.{j}", f"{prefix}{i}", "x") for j in range(20)
                ]
                await store.ingest("s", items, 1.0)

        try:
            await aio.gather(*(one(i) for i in range(count)))
        finally:
            await store.close()

    aio.run(main())


def test_two_processes_writing_steadily_both_get_through(tmp_path: Path) -> None:
    # Two real processes on one SQLite file, each committing groups back to back, with a busy
    # timeout of 0.1 s. Left to SQLite's sleeping back-off, one of them loses the write lock
    # again and again until its timeout runs out ("database is locked"); taking turns through
    # the lock file, every ingest of both gets through.
    import multiprocessing

    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, name, 1500, 0.1)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (60000,)
    finally:
        conn.close()
