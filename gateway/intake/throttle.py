"""Throttling failed authentication per client address.

After `max_failures` failed Basic-auth attempts from one address within `window` seconds, that
address is answered 429 (with ``Retry-After``) without its credentials being checked until the
window ends. Addresses that authenticate correctly are never counted, and a success clears its
address's count, so valid clients elsewhere are not slowed. IPv6 clients are counted per /64
(one host usually holds a whole /64, so rotating addresses inside it would dodge a per-address
count). Memory is bounded: at most `max_addresses` addresses are tracked; the oldest entry makes
room for a new one.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict

#: Addresses tracked at once; a spray of addresses evicts the oldest entries, never grows memory.
MAX_ADDRESSES = 10_000


@functools.lru_cache(maxsize=4096)  # parsing an address is most of a request's throttle cost
def _key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


class FailureThrottle:
    """Counts failures per address in fixed windows (see the module docstring).

    `max_failures` 0 disables throttling. Times are seconds from the caller's clock.
    """

    def __init__(
        self, max_failures: int, window: float, max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        #: key -> [window start, failures in it]
        self._seen: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds until `address` may try again, or None when it is not throttled."""
        if not self.max_failures or not self._seen:  # nobody has failed lately: the usual case
            return None
        entry = self._seen.get(_key(address))
        if entry is None:
            return None
        start, failures = entry
        if now - start >= self.window:
            del self._seen[_key(address)]
            return None
        return start + self.window - now if failures >= self.max_failures else None

    def failed(self, address: str, now: float) -> bool:
        """Count one failure; True when this failure reaches the limit (the moment to log)."""
        if not self.max_failures:
            return False
        key = _key(address)
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            self._seen.pop(key, None)
            while len(self._seen) >= self.max_addresses:
                self._seen.popitem(last=False)
            entry = self._seen[key] = [now, 0]
        entry[1] += 1
        return entry[1] == self.max_failures

    def succeeded(self, address: str) -> None:
        """A correct authentication clears the address's count."""
        if self._seen:
            self._seen.pop(_key(address), None)
