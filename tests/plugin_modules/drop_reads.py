"""A test plugin: an async filter_event dropping read receipts."""

from gateway import hookimpl


@hookimpl
async def filter_event(event, meta):
    return False if event.get("status") in ("read", "unread") else None
