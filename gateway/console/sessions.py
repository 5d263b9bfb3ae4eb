"""Console sessions and CSRF tokens: signed cookies, no server-side session table.

A session cookie is ``<session id>.<expiry>.<signature>``: the signature is an HMAC-SHA256, under
a key derived from ``admin.token``, of the id and the expiry. Any gateway process (every Sanic
worker, every instance sharing the store) can check it without shared memory, and changing
``admin.token`` ends every session at once. Logging out records the session id as revoked in the
store (a mark that outlives the session), so a copied cookie stops working too.

The CSRF token of a session is an HMAC of its id under the same key: a form carries it in a
hidden ``csrf`` field, and every POST but the login must bring it back (compared in constant
time). The cookie is ``HttpOnly`` and ``SameSite=Strict``; ``Secure`` over HTTPS or when
``admin.secure_cookie`` says the gateway sits behind a TLS proxy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from gateway.store import Store

COOKIE = "cg_console"
REVOKED_PREFIX = "console-revoked:"


def _key(admin_token: str) -> bytes:
    return hashlib.sha256(b"callback-gateway console session\0" + admin_token.encode()).digest()


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    id: str
    expires_at: float

    def csrf(self, admin_token: str) -> str:
        """The token this session's forms carry."""
        return _sign(_key(admin_token), "csrf:" + self.id)

    def csrf_ok(self, admin_token: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.csrf(admin_token), given)


def token_ok(admin_token: str, given: str | None) -> bool:
    """Is `given` the admin token (constant time)?"""
    return given is not None and hmac.compare_digest(admin_token.encode(), given.encode())


def new_session(admin_token: str, now: float, ttl: float) -> tuple[Session, str]:
    """A fresh session and its cookie value."""
    session = Session(secrets.token_urlsafe(18), now + ttl)
    body = f"{session.id}.{session.expires_at:.0f}"
    return session, f"{body}.{_sign(_key(admin_token), body)}"


def read_cookie(admin_token: str, value: str | None, now: float) -> Session | None:
    """The session a cookie value proves, or None (missing, forged, or expired)."""
    if not value or value.count(".") != 2:
        return None
    sid, expiry, signature = value.split(".")
    if not hmac.compare_digest(_sign(_key(admin_token), f"{sid}.{expiry}"), signature):
        return None
    try:
        expires_at = float(expiry)
    except ValueError:
        return None
    return Session(sid, expires_at) if expires_at > now else None


async def is_revoked(store: Store, session: Session) -> bool:
    return await store.get_mark(REVOKED_PREFIX + session.id, scope="gateway") is not None


async def revoke(store: Store, session: Session, now: float) -> None:
    """Log `session` out everywhere (its cookie may have been copied)."""
    # The gateway's own scope: retention never forgets it (a session may outlive the plugin
    # marks' window) and no plugin can read or remove it.
    await store.set_mark(
        REVOKED_PREFIX + session.id,
        json.dumps({"expires_at": session.expires_at}),
        now,
        scope="gateway",
    )
