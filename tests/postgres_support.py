"""Test helpers for the PostgreSQL store: a scratch database per test, created and dropped here.

The tests need a real PostgreSQL server (``CALLBACK_GATEWAY_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/postgres``: the machine's own, trust auth; ``.ci/run``
starts it). They fail, not skip, when it is not running: a skipped store test would hide a
broken backend. Databases are named ``cg_test_<random>`` and dropped afterwards (``WITH
(FORCE)``: connections a killed gateway left behind do not keep it).

Creating a database takes a second or two (it is fsynced), so the contract suite creates one
per test session and gives each test a schema of its own in it, chosen through libpq's
``options`` parameter in the store URL (``?options=-csearch_path%3D<schema>``), which is also
how an operator keeps the gateway's tables apart in a shared database.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg

from gateway.store.postgres import PostgresStore

ADMIN_URL = os.environ.get(
    "CALLBACK_GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def create_database() -> str:
    """A fresh empty database; returns its name."""
    name = f"cg_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """The URL of a fresh database, dropped on exit."""
    name = create_database()
    try:
        yield database_url(name)
    finally:
        drop_database(name)


def terminate_connections(url: str) -> int:
    """``pg_terminate_backend`` every connection to `url`'s database; returns how many."""
    name = url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid != pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


_session_database: str | None = None


def session_database() -> str:
    """The name of this test process's shared database, created on first use and dropped
    when the process exits."""
    global _session_database
    if _session_database is None:
        _session_database = create_database()
        atexit.register(drop_database, _session_database)
    return _session_database


def schema_url(database: str, schema: str) -> str:
    return f"{database_url(database)}?options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def scratch_schema() -> Iterator[tuple[str, str]]:
    """``(store URL, schema name)`` of a fresh schema in the session's database, dropped (with
    everything in it) on exit."""
    database = session_database()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url(database), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema_url(database, schema), schema
    finally:
        with psycopg.connect(database_url(database), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextlib.asynccontextmanager
async def postgres_backend(tmp_path: Path) -> AsyncIterator[Callable[[], PostgresStore]]:
    """The contract suite's backend: unopened stores sharing one fresh schema."""
    with scratch_schema() as (url, _):
        yield lambda: PostgresStore(url)
