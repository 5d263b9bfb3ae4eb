"""Secrets never leave the process in clear text.

Values under keys named `password`, `secret`, `token`, `webhook_url` or `authorization` (any case,
at any depth, including inside `headers`) are replaced by `***`, and so is the password part of
any URL's userinfo (`redis://:pw@host`, `http://user:pw@host`).
"""

from __future__ import annotations

import re
from typing import Any

SECRET_KEYS = frozenset({"password", "secret", "token", "webhook_url", "authorization"})
MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def is_secret_key(key: object) -> bool:
    """True when a value stored under `key` must be masked."""
    return isinstance(key, str) and key.lower() in SECRET_KEYS


def redact_url(text: str) -> str:
    """Mask the password in every `scheme://user:password@` inside `text`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact(tree: Any) -> Any:
    """A copy of `tree` with secret values masked; safe to print or log."""
    if isinstance(tree, dict):
        return {
            k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v))
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    if isinstance(tree, str):
        return redact_url(tree)
    return tree


def collect_secrets(tree: Any) -> set[str]:
    """Every secret value in `tree`, so logs and stored error texts can be scrubbed of them."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if is_secret_key(k) and isinstance(v, str) and v:
                    found.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tree)
    return found


def scrub(text: str, secrets: set[str]) -> str:
    """`text` with every known secret value and URL password masked."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    return redact_url(text)
