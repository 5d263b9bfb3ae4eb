"""SQLite specifics of retention: files of the previous release upgraded in place, space given
back, the WAL bounded. (The behaviour every backend shares is in test_store_contract.py.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlite_schema_v0 import SCHEMA as SCHEMA_V0

from gateway.delivery import admin
from gateway.store import IncomingEvent
from gateway.store.base import RetentionPolicy
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_retention import WAL_LIMIT
from gateway.store.sqlite_schema import VERSION

T0 = 1_700_000_000.0
DAY = 86400.0


def v0_file(path: Path) -> None:
    """A database exactly as the previous release made it: its DDL, its PRAGMAs, and the marks
    it kept for pauses and the silence alarm beside a plugin's ordering mark."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_V0)
    marks = [
        ("paused:crm", "", json.dumps({"reason": "maintenance", "at": T0}), T0),
        ("silence:revicom", "00000001700000000.000", "1700000000.0", T0),
        ("last-seen:revicom", "00000001700000000.000", "1700000000.0", T0),
        ("ordering:all:u1:status", "2|x", "{}", T0),
    ]
    conn.executemany("INSERT INTO marks VALUES (?, ?, ?, ?)", marks)
    conn.execute(
        "INSERT INTO events (id, source, received_at, raw, state, updated_at)"
        " VALUES ('evt_01', 'revicom', ?, '{}', 'routed', ?)",
        (T0, T0),
    )
    conn.execute(
        "INSERT INTO deliveries (id, event_id, source, route, destination, state,"
        " next_attempt_at, created_at, updated_at)"
        " VALUES ('msg_01', 'evt_01', 'revicom', 'all', 'crm', 'dead', ?, ?, ?)",
        (T0, T0, T0),
    )
    conn.execute("INSERT INTO dedupe VALUES ('revicom', 'k', 'evt_01', ?, 0)", (T0,))
    conn.close()


def everything(seconds: float) -> RetentionPolicy:
    names = ("dedupe", "events", "delivered", "dead", "quarantined", "marks")
    return RetentionPolicy(**dict.fromkeys(names, seconds))


async def test_a_file_of_the_previous_release_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "var" / "gateway.db"
    v0_file(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await admin.paused_reason(store, "crm") == "maintenance"
        assert await store.get_mark("paused:crm") is None
        assert await store.get_mark("silence:revicom", scope="gateway") is not None
        assert await store.get_mark("last-seen:revicom", scope="gateway") is not None
        assert await store.get_mark("ordering:all:u1:status") == ("2|x", "{}")
        # what the previous release stored is served, and retention applies to it
        assert (await store.get_delivery("msg_01"))[0].state == "dead"
        assert (await store.ingest("revicom", [IncomingEvent("{}", "k")], T0 + 1)).duplicates == 1
        removed = await store.purge(everything(60), T0 + 100 * DAY)
        assert (removed["dead"], removed["events"], removed["dedupe_keys"], removed["marks"]) == (
            1,
            1,
            1,
            1,
        )
        assert await admin.paused_reason(store, "crm") == "maintenance"
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    # Switching auto_vacuum needs a full VACUUM: never done behind the operator's back.
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()


async def test_opening_an_upgraded_file_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    v0_file(path)
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        assert await admin.paused_reason(store, "crm") == "maintenance"
        await store.close()


async def test_a_new_file_hands_freed_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        body = "x" * 2000
        for start in range(0, 3000, 500):
            items = [
                IncomingEvent(json.dumps({"b": body, "i": i}), f"k{i}", problems=("bad",))
                for i in range(start, start + 500)
            ]
            await store.ingest("s", items, T0)
        await store.reclaim()
        full = path.stat().st_size
        removed = await store.purge(everything(1), T0 + 10)
        assert removed["quarantined"] == 3000
        await store.reclaim()
        assert path.stat().st_size < full / 3
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    conn.close()


@pytest.mark.parametrize("upgraded", [False, True])
async def test_ingesting_again_after_a_purge_grows_the_file_much_less(
    tmp_path: Path, upgraded: bool
) -> None:
    path = tmp_path / "gw.db"
    if upgraded:
        v0_file(path)  # a file without incremental vacuum: free pages are reused in place
    store = SQLiteStore(path)
    await store.open()

    async def fill(tag: str) -> int:
        before = _files(path)
        for start in range(0, 2000, 500):
            items = [
                IncomingEvent(json.dumps({"b": "y" * 1000, "i": i}), f"{tag}{i}", problems=("bad",))
                for i in range(start, start + 500)
            ]
            await store.ingest("s", items, T0)
        return _files(path) - before

    try:
        first = await fill("a")
        await store.purge(everything(1), T0 + 10)
        await store.reclaim()
        second = await fill("b")
        assert second < first / 4, (first, second)
    finally:
        await store.close()


def _files(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


async def test_the_wal_is_truncated_after_checkpoints_to_a_bounded_size(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gw.db")
    await store.open()
    try:
        limit = await store._read(lambda c: c.execute("PRAGMA journal_size_limit").fetchone()[0])
        assert limit == WAL_LIMIT
    finally:
        await store.close()


async def test_delivery_bookkeeping_commits_without_fsync_and_callbacks_with_it(
    tmp_path: Path,
) -> None:
    """Callbacks and routing results commit with ``synchronous=FULL``; claims, attempt outcomes
    and hand-backs (a power cut only makes a delivery go out again) with ``NORMAL``. Read from
    the store's own connection after each commit."""
    from gateway.ids import new_id
    from gateway.store.base import AttemptRecord, NewDelivery

    store = SQLiteStore(tmp_path / "gateway.db")
    await store.open()

    async def level() -> int:
        row = await store._read(lambda c: c.execute("PRAGMA synchronous").fetchone())
        return int(row[0])

    try:
        result = await store.ingest("revicom", [IncomingEvent('{"a": 1}', "k1")], T0)
        assert await level() == 2
        (event_id,) = result.event_ids
        delivery = NewDelivery(new_id("msg"), event_id, "all", "crm", T0)
        await store.finish_event(event_id, "routed", [delivery], T0)
        assert await level() == 2
        (claimed,) = await store.claim_deliveries("me", "crm", 10, 30.0, T0)
        assert await level() == 1
        await store.release([claimed.id], T0)
        assert await level() == 1
        (claimed,) = await store.claim_deliveries("me", "crm", 10, 30.0, T0)
        attempt = AttemptRecord(T0, T0 + 0.1, "delivered", 204)
        await store.finish_attempt(claimed.id, attempt, "delivered", None, True, T0 + 0.1)
        assert await level() == 1
        await store.ingest("revicom", [IncomingEvent('{"a": 2}', "k2")], T0 + 1)
        assert await level() == 2
    finally:
        await store.close()
