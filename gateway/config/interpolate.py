"""Strict `${VAR}` / `${VAR:-default}` replacement over a parsed YAML tree.

A variable that is unset and has no default is a problem naming the variable and the key path.
`$${` is a literal `${`. Only string values are touched, never keys. The environment is a
parameter so tests pass their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.config.paths import join_path

_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def interpolate(tree: Any, env: Mapping[str, str], problems: list[str], path: str = "") -> Any:
    """Return `tree` with variables replaced; append one line per missing variable to `problems`."""
    if isinstance(tree, dict):
        return {k: interpolate(v, env, problems, join_path(path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [interpolate(v, env, problems, join_path(path, i)) for i, v in enumerate(tree)]
    if isinstance(tree, str) and "$" in tree:
        return _replace(tree, env, problems, path)
    return tree


def _replace(text: str, env: Mapping[str, str], problems: list[str], path: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is not None and (value != "" or default is None):
            return value
        if default is not None:
            return default
        problems.append(
            f"{path or '<root>'}: environment variable {name} is not set"
            f" (set it, or write ${{{name}:-default}})"
        )
        return ""

    return _PATTERN.sub(one, text)
