"""Durable storage. `store_from_url(url)` picks the backend from the URL scheme."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError
from gateway.store.base import (
    AttemptRecord,
    DeliveryFilter,
    DeliveryPage,
    DeliveryRecord,
    EventRecord,
    FinishedEvent,
    IncomingEvent,
    IngestResult,
    Lease,
    NewDelivery,
    SourceActivity,
    Store,
)


def store_from_url(url: str, base: Path | None = None) -> Store:
    """A (not yet opened) store for `url`. ``sqlite:///rel.db`` is relative to `base` (the
    working directory by default); ``sqlite:////abs.db`` is absolute."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        return SQLiteStore(path)
    if url.startswith(("redis://", "rediss://")):
        from gateway.store.redis import RedisStore

        return RedisStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError([f"store: unsupported store URL scheme in {url.split('://')[0]!r}"])


__all__ = [
    "AttemptRecord",
    "DeliveryFilter",
    "DeliveryPage",
    "DeliveryRecord",
    "EventRecord",
    "FinishedEvent",
    "IncomingEvent",
    "IngestResult",
    "Lease",
    "NewDelivery",
    "SourceActivity",
    "Store",
    "store_from_url",
]
