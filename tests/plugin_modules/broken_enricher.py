"""A test plugin whose enrich_event raises."""

from gateway import hookimpl


@hookimpl
async def enrich_event(event, meta):
    raise RuntimeError("the CRM is down")
