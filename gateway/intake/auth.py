"""Who may post to a source: Basic credentials (constant time) and an optional address allowlist.

`X-Forwarded-For` is believed only when the connection comes from a configured trusted proxy;
then the client is the right-most address in the header that is not itself a trusted proxy.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _in(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Sequence[Network]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The address to check against `allow_ips` (see the module docstring)."""
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not trusted or not forwarded_for or not _in(addr, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            hop_addr = ipaddress.ip_address(hop)
        except ValueError:
            return hop  # an unparseable hop is nobody we trust
        if not _in(hop_addr, trusted):
            return hop
    return peer


def address_allowed(address: str, allow: Sequence[Network]) -> bool:
    try:
        return _in(ipaddress.ip_address(address), allow)
    except ValueError:
        return False


class BasicAuth:
    """Checks an ``Authorization`` header against one username and password."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode("utf-8")
        self._password = password.encode("utf-8")

    def check(self, header: str | None) -> bool:
        """True when `header` carries exactly these credentials; timing does not reveal which
        part was wrong or how much of it matched."""
        user, password = b"", b""
        ok = False
        if header and header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            user, sep, password = decoded.partition(b":")
            ok = bool(sep)
        same_user = hmac.compare_digest(user, self._username)
        same_password = hmac.compare_digest(password, self._password)
        return ok and same_user and same_password
