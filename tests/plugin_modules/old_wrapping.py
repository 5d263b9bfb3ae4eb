"""A test plugin: an old-style hookwrapper of filter_event that overrides the verdicts."""

from gateway import hookimpl

SEEN: list[list] = []


@hookimpl(hookwrapper=True)
def filter_event(event, meta):
    outcome = yield
    SEEN.append(list(outcome.get_result()))
    if event.get("status") == "read":  # keep read receipts whatever the filters said
        outcome.force_result([])
