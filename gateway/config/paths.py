"""Key paths as users read them: `sources.revicom.auth.basic.username`, `routes[0].to[1]`."""

from __future__ import annotations

from collections.abc import Iterable


def join_path(path: str, key: object) -> str:
    """Append a mapping key or a list index to a dotted path."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def format_loc(loc: Iterable[object], prefix: str = "") -> str:
    """A pydantic error location as a key path."""
    path = prefix
    for part in loc:
        path = join_path(path, part)
    return path or "<root>"
