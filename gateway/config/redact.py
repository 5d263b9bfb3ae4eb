"""Secrets never leave the process in clear text.

Values under keys named `password`, `secret`, `token`, `webhook_url` or `authorization` (any case,
at any depth, including inside `headers`) are replaced by `***`, and so is the password part of
any URL's userinfo (`redis://:pw@host`, `http://user:pw@host`).
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote

SECRET_KEYS = frozenset({"password", "secret", "token", "webhook_url", "authorization"})
MASK = "***"
_USERINFO_FULL = re.compile(
    r"[a-zA-Z][a-zA-Z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@"
)
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
    """Every secret value in `tree`, so logs and stored error texts can be scrubbed of them.

    Besides values under secret keys this includes the forms in which credentials travel and can
    be echoed back by a peer: a URL's userinfo password (decoded), and the base64 of
    ``user:password`` that HTTP Basic sends, for URL userinfo and for ``username``/``password``
    pairs.
    """
    found: set[str] = set()

    def basic(user: str, password: str) -> None:
        found.add(password)
        found.add(base64.b64encode(f"{user}:{password}".encode()).decode())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if is_secret_key(k) and isinstance(v, str) and v:
                    found.add(v)
                walk(v)
            user, password = node.get("username"), node.get("password")
            if isinstance(user, str) and isinstance(password, str) and password:
                basic(user, password)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and "@" in node:
            for m in _USERINFO_FULL.finditer(node):
                if m["password"]:
                    basic(unquote(m["user"]), unquote(m["password"]))

    walk(tree)
    return {s for s in found if s}


def scrub(text: str, secrets: set[str]) -> str:
    """`text` with every known secret value and URL password masked."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    return redact_url(text)
