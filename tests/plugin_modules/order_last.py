"""A test plugin: an enrich_event marked trylast; it sees what the earlier ones added."""

from gateway import hookimpl

CALLS: list[str] = []


@hookimpl(trylast=True)
def enrich_event(event, meta):
    CALLS.append("last")
    return {"order": [*event.get("order", []), "last"]}
