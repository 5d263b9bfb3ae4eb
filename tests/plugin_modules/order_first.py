"""A test plugin: an enrich_event marked tryfirst that records when it ran."""

from gateway import hookimpl

CALLS: list[str] = []


@hookimpl(tryfirst=True)
async def enrich_event(event, meta):
    CALLS.append("first")
    return {"order": [*event.get("order", []), "first"]}
