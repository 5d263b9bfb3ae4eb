"""A test plugin: a new-style wrapper of enrich_event that sees the call and its results
(awaited, not coroutines) and adds one result of its own."""

from gateway import hookimpl

SEEN: list[dict] = []


@hookimpl(wrapper=True)
def enrich_event(event, meta):
    results = yield
    SEEN.append({"event_id": meta["event_id"], "results": list(results)})
    return [*results, {"wrapped": len(results)}]
