"""Durable per-key state lent to filters and enrichers (``meta["marks"]``) and to destinations
(``services.marks``).

A thin view over the store's marks (`Store.advance_mark`, `get_mark`, `set_mark`) that knows the
clock, and that in a dry run (``explain``, or no store) reads the store when there is one but
writes only to an in-memory overlay, so a dry run changes nothing and still shows what a
sequence of events would do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.store.base import Store


class Marks:
    def __init__(
        self,
        store: Store | None,
        clock: Clock,
        *,
        dry_run: bool = False,
        overlay: dict[str, tuple[str, str] | None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.dry_run = dry_run or store is None
        #: Dry-run writes; None marks a key deleted in this dry run.
        self.overlay = overlay if overlay is not None else {}

    async def get(self, key: str) -> tuple[str, str] | None:
        """(rank, value) under `key`, or None."""
        if key in self.overlay:
            return self.overlay[key]
        if self.store is None:
            return None
        return await self.store.get_mark(key)

    async def advance(self, key: str, rank: str, value: str) -> tuple[bool, str | None]:
        """Store (`rank`, `value`) if `key` is new or its rank sorts strictly below `rank`.
        Returns (advanced, previous value); atomic against concurrent callers."""
        if not self.dry_run:
            assert self.store is not None
            return await self.store.advance_mark(key, rank, value, self.clock.now())
        current = await self.get(key)
        if current is not None and current[0] >= rank:
            return False, current[1]
        self.overlay[key] = (rank, value)
        return True, current[1] if current else None

    async def set(self, key: str, value: str | None, rank: str = "") -> None:
        """Store `value` under `key` unconditionally; None deletes it."""
        if not self.dry_run:
            assert self.store is not None
            await self.store.set_mark(key, value, self.clock.now(), rank)
            return
        self.overlay[key] = None if value is None else (rank, value)
