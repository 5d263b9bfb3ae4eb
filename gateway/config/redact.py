"""Secrets never leave the process in clear text.

Values under keys named `password`, `secret`, `token`, `webhook_url` or `authorization` (any case,
at any depth, including inside `headers`) are replaced by `***`, and so is the password part of
any URL's userinfo (`redis://:pw@host`, `http://user:pw@host`). `collect_secrets` also gathers
what a peer can echo back in part: configured header values, and the path and query of a URL
that is a secret; `scrub` masks every gathered value in a text.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET_KEYS = frozenset({"password", "secret", "token", "webhook_url", "authorization"})
MASK = "***"
_USERINFO_FULL = re.compile(
    r"[a-zA-Z][a-zA-Z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@"
)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


#: Header names whose configured values are not secrets (everything else under a ``headers``
#: mapping is treated as one: ``X-Api-Key``, ``X-Auth``, a tenant id...).
PLAIN_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-encoding",
        "content-language",
        "content-type",
        "user-agent",
    }
)
#: URL parts shorter than this are not scrubbed on their own (``/hooks`` is no secret).
MIN_URL_PART = 12


def is_secret_key(key: object) -> bool:
    """True when a value stored under `key` must be masked."""
    return isinstance(key, str) and key.lower() in SECRET_KEYS


def redact_url(text: str) -> str:
    """Mask the password in every `scheme://user:password@` inside `text`."""
    if "://" not in text:  # most log lines: no URL, no regex scan
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact(tree: Any) -> Any:
    """A copy of `tree` with secret values masked (also configured header values but for
    `PLAIN_HEADERS`); safe to print or log."""
    if isinstance(tree, dict):
        return {
            k: (
                MASK
                if is_secret_key(k) and v not in (None, "")
                else _redact_headers(v)
                if k == "headers" and isinstance(v, dict)
                else redact(v)
            )
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    if isinstance(tree, str):
        return redact_url(tree)
    return tree


def url_parts(value: str) -> set[str]:
    """The parts of a secret URL that a receiver can echo without the rest: its path (a Slack
    incoming webhook's secret is its path), path segments and query, when long enough to be
    secret rather than generic. Empty when `value` is not an http(s) URL."""
    parsed = urlsplit(value)
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        return set()
    parts = {parsed.path, parsed.query, f"{parsed.path}?{parsed.query}" if parsed.query else ""}
    parts |= set(parsed.path.split("/"))
    parts |= {unquote(p) for p in parts}
    return {p for p in parts if len(p) >= MIN_URL_PART}


def _redact_headers(headers: dict[Any, Any]) -> dict[Any, Any]:
    return {
        name: value if str(name).lower() in PLAIN_HEADERS or value in (None, "") else MASK
        for name, value in headers.items()
    }


def collect_secrets(tree: Any) -> set[str]:
    """Every secret value in `tree`, so logs and stored error texts can be scrubbed of them.

    Besides values under secret keys this includes the forms in which credentials travel and can
    be echoed back by a peer: a URL's userinfo password (decoded), and the base64 of
    ``user:password`` that HTTP Basic sends, for URL userinfo and for ``username``/``password``
    pairs; the values of configured ``headers`` (but for `PLAIN_HEADERS`); and, for a secret
    that is a URL (``webhook_url``), its path and query (`url_parts`).
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
                if k == "headers" and isinstance(v, dict):
                    found.update(
                        value
                        for name, value in v.items()
                        if isinstance(value, str) and str(name).lower() not in PLAIN_HEADERS
                    )
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
    for secret in list(found):
        found |= url_parts(secret)
    return {s for s in found if s}


def scrub(text: str, secrets: Collection[str]) -> str:
    """`text` with every known secret value and URL password masked. Longer secrets are masked
    first, so a secret containing another (a URL and its path) is masked whole."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, MASK)
    return redact_url(text)
