"""Test helpers for the Redis store: the server under test, a fresh key prefix per test, and
cleanup of exactly that prefix.

The tests need a real Redis server (``CALLBACK_GATEWAY_TEST_REDIS``, default
``redis://127.0.0.1:6379/0``). They fail, not skip, when it is not running: a skipped store
test would hide a broken backend.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import redis.asyncio as aioredis

from gateway.store.redis import RedisStore

REDIS_URL = os.environ.get("CALLBACK_GATEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unique_prefix() -> str:
    return f"cg-test:{uuid.uuid4().hex[:12]}:"


def store_url(prefix: str) -> str:
    return f"{REDIS_URL}?prefix={prefix}"


async def delete_prefix(prefix: str) -> int:
    """Delete every key under `prefix` (and nothing else); returns how many."""
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
    client = aioredis.Redis.from_url(REDIS_URL)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch = []
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


@contextlib.asynccontextmanager
async def redis_backend(tmp_path: Path) -> AsyncIterator[Callable[[], RedisStore]]:
    """The contract suite's backend: unopened stores sharing one fresh prefix."""
    prefix = unique_prefix()
    try:
        yield lambda: RedisStore(store_url(prefix))
    finally:
        await delete_prefix(prefix)
