"""Retention for the SQLite store: the steps of a purge pass, and giving freed space back.

Each step is a function of a connection that removes at most `batch` rows of one kind and runs
as one committer operation (one short transaction), so intake's group commits interleave with
a pass that removes millions of rows. Every step reads only through an index in the order it
deletes (`gateway.store.sqlite_schema`), so a step's cost is its batch, not the table's size.

Events are walked in id order, which is receive order (`gateway.ids`): `floor_id` turns the
cutoff into a primary-key bound, and a cursor (the last id removed) means an old event that
must stay (a delivery of it is still pending, for example for a paused destination) is read
once per pass, not once per step.

Space: pages freed by deletes go on SQLite's free list and new rows reuse them, so the file
stops growing once retention removes as much as arrives. Files made with
``auto_vacuum=INCREMENTAL`` (every file this release creates) also hand the free pages beyond
`KEEP_FREE` of the file back to the filesystem after a pass (`vacuum_step`). The WAL is bounded by
SQLite's automatic checkpoints (every 1000 pages) and ``journal_size_limit`` (`WAL_LIMIT`),
which truncates it after each reset; `checkpoint` runs one more passive checkpoint after a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from functools import partial
from pathlib import Path

from gateway.ids import floor_id
from gateway.store.base import PURGE_KINDS, Footprint, Pacer, RetentionPolicy
from gateway.store.sqlite_rows import Runs, advance_mark, mark_table, put_mark

#: ``PRAGMA journal_size_limit``: after a checkpoint resets the WAL, it is truncated to this.
WAL_LIMIT = 64 * 1024 * 1024
#: Free pages kept in the file for new rows (a fraction of all pages); the rest go back.
KEEP_FREE = 0.10
#: Pages one vacuum step hands back (each step is its own transaction): 4 MiB at 4 KiB pages.
VACUUM_STEP = 1024

#: Event states a finished event can be in (routed, unmatched, filtered): the ``events`` kind.
DONE_STATES = ("routed", "unmatched", "filtered")


def delete_deliveries(
    c: sqlite3.Connection, state: str, before: float, batch: int
) -> tuple[int, int]:
    """Remove up to `batch` deliveries in `state` (``delivered`` or ``dead``) last changed
    before `before`, with their attempts. Returns (deliveries, attempts) removed."""
    if state not in ("delivered", "dead"):
        raise ValueError(f"not a finished delivery state: {state!r}")
    # The state is a literal so that SQLite picks the partial index of that state.
    ids = [
        r[0]
        for r in c.execute(
            f"SELECT id FROM deliveries WHERE state = '{state}' AND updated_at < ?"
            " ORDER BY updated_at LIMIT ?",
            (before, batch),
        ).fetchall()
    ]
    if not ids:
        return 0, 0
    attempts = c.executemany(
        "DELETE FROM attempts WHERE delivery_id = ?", [(i,) for i in ids]
    ).rowcount
    removed = c.executemany(
        f"DELETE FROM deliveries WHERE id = ? AND state = '{state}'", [(i,) for i in ids]
    ).rowcount
    return removed, attempts


def delete_events(
    c: sqlite3.Connection,
    state: str,
    before: float,
    after: str,
    batch: int,
    *,
    by_update: bool = False,
) -> tuple[int, str | None]:
    """Remove up to `batch` events in `state` with ids above `after` that have no delivery
    left and were received (`by_update`: last changed) before `before`. Returns (removed,
    the highest id removed, or None when none was)."""
    column = "updated_at" if by_update else "received_at"
    rows = c.execute(
        "DELETE FROM events WHERE id IN (SELECT e.id FROM events e"
        f" WHERE e.state = ? AND e.id > ? AND e.id < ? AND e.{column} < ?"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)"
        " ORDER BY e.id LIMIT ?) RETURNING id",
        # updated_at >= received_at, so the receive-order bound holds for both columns.
        (state, after, floor_id("evt", before), before, batch),
    ).fetchall()
    return len(rows), max((r[0] for r in rows), default=None)


def delete_dedupe_keys(c: sqlite3.Connection, before: float, batch: int) -> int:
    """Remove up to `batch` dedupe keys first seen before `before`."""
    return c.execute(
        "DELETE FROM dedupe WHERE (source, key) IN (SELECT source, key FROM dedupe"
        " WHERE first_seen < ? ORDER BY first_seen LIMIT ?)",
        (before, batch),
    ).rowcount


def delete_marks(c: sqlite3.Connection, before: float, batch: int) -> int:
    """Remove up to `batch` plugin marks last written before `before` (``gateway_marks`` are
    never touched)."""
    return c.execute(
        "DELETE FROM marks WHERE key IN (SELECT key FROM marks WHERE updated_at < ?"
        " ORDER BY updated_at LIMIT ?)",
        (before, batch),
    ).rowcount


def vacuum_step(c: sqlite3.Connection) -> int:
    """Hand up to `VACUUM_STEP` free pages beyond `KEEP_FREE` back to the filesystem, in a file
    made with ``auto_vacuum=INCREMENTAL``; returns the pages handed back (0: nothing to do)."""
    if c.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2 = INCREMENTAL
        return 0
    free = c.execute("PRAGMA freelist_count").fetchone()[0]
    total = c.execute("PRAGMA page_count").fetchone()[0]
    excess = free - int(total * KEEP_FREE)
    if excess <= 0:
        return 0
    pages = min(excess, VACUUM_STEP)
    c.execute(f"PRAGMA incremental_vacuum({pages})").fetchall()
    return pages


def checkpoint(path: Path, busy_timeout: float) -> None:
    """One passive WAL checkpoint on a connection of its own (a checkpoint cannot run inside
    the committer's transactions); it copies what it can and never blocks a writer."""
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def file_sizes(path: Path) -> tuple[int, int | None]:
    """(bytes of the database file and its WAL, bytes free on their filesystem)."""
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            size += os.stat(f"{path}{suffix}").st_size
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return size, None
    return size, st.f_bavail * st.f_frsize


class SQLiteRetention(Runs):
    """`Store`'s retention and mark methods on SQLite (a mixin of `SQLiteStore`)."""

    # -- retention ---------------------------------------------------------------------------
    async def purge(self, policy: RetentionPolicy, now: float) -> dict[str, int]:
        counts = dict.fromkeys(PURGE_KINDS, 0)
        batch, pace = policy.batch, Pacer(policy)
        for state, window in (("delivered", policy.delivered), ("dead", policy.dead)):
            while True:
                removed, attempts = await pace(
                    self._write(
                        partial(delete_deliveries, state=state, before=now - window, batch=batch)
                    )
                )
                counts[state] += removed
                counts["attempts"] += attempts
                if removed < batch:
                    break
        kinds = [(s, "events", policy.events, False) for s in DONE_STATES]
        kinds.append(("quarantined", "quarantined", policy.quarantined, True))
        for state, kind, window, by_update in kinds:
            after = ""
            while True:
                removed, last = await pace(
                    self._write(
                        partial(
                            delete_events,
                            state=state,
                            before=now - window,
                            after=after,
                            batch=batch,
                            by_update=by_update,
                        )
                    )
                )
                counts[kind] += removed
                if removed < batch or last is None:
                    break
                after = last
        for kind, window, step in (
            ("dedupe_keys", policy.dedupe, delete_dedupe_keys),
            ("marks", policy.marks, delete_marks),
        ):
            while True:
                removed = await pace(self._write(partial(step, before=now - window, batch=batch)))
                counts[kind] += removed
                if removed < batch:
                    break
        return counts

    async def reclaim(self) -> None:
        while await self._write(vacuum_step):
            pass
        await asyncio.get_running_loop().run_in_executor(
            None, checkpoint, self.path, self.busy_timeout
        )

    async def footprint(self) -> Footprint:
        size, free = await asyncio.get_running_loop().run_in_executor(None, file_sizes, self.path)
        return Footprint(bytes=size, free_bytes=free)

    # -- marks -----------------------------------------------------------------------------------
    async def advance_mark(
        self, key: str, rank: str, value: str, now: float, *, scope: str = "plugin"
    ) -> tuple[bool, str | None]:
        table = mark_table(scope)
        return await self._write(lambda c: advance_mark(c, table, key, rank, value, now))

    async def get_mark(self, key: str, *, scope: str = "plugin") -> tuple[str, str] | None:
        table = mark_table(scope)
        row = await self._read(
            lambda c: c.execute(f"SELECT rank, value FROM {table} WHERE key = ?", (key,)).fetchone()
        )
        return (row[0], row[1]) if row else None

    async def set_mark(
        self, key: str, value: str | None, now: float, rank: str = "", *, scope: str = "plugin"
    ) -> None:
        table = mark_table(scope)
        if value is None:
            await self._write(lambda c: c.execute(f"DELETE FROM {table} WHERE key = ?", (key,)))
            return
        await self._write(lambda c: put_mark(c, table, key, rank, value, now))
