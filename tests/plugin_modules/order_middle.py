"""A test plugin: an unmarked async enrich_event that yields to the loop while it works."""

import asyncio

from gateway import hookimpl


@hookimpl
async def enrich_event(event, meta):
    await asyncio.sleep(0)
    return {"order": [*event.get("order", []), "middle"]}
