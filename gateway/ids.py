"""Identifiers: time-ordered, URL-safe, unique across processes and restarts.

`new_id("evt")` gives `evt_01JD...` (a ULID: 48-bit millisecond time + 80 random bits, Crockford
base32), so ids sort by creation time in the store and in listings. Within one process, ids made
in the same millisecond keep their creation order (the random part is incremented, as the ULID
spec's monotonic mode does), so the events of one request body list in body order.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters (10 bits) per lookup: the 130 bits of 26 characters in 13 steps, half the
# Python work of one character at a time (ids are made on the request path).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = tuple(range(120, -10, -10))
_lock = threading.Lock()
_last = 0


def new_id(prefix: str, now: float | None = None) -> str:
    """A new id `prefix_<26 chars>`; `now` (epoch seconds) fixes the time part for tests."""
    global _last
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        if value <= _last and (_last >> 80) == millis:
            value = _last + 1
        _last = value
    return f"{prefix}_{''.join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])}"


def new_ids(prefix: str, n: int, now: float | None = None) -> list[str]:
    """`n` new ids as `new_id` makes them, in order, for the cost of one random draw: the first
    is a fresh id, the others follow it (+1, as ULID's monotonic mode does within one
    millisecond). For the events of one request body, made inside the store's transaction."""
    global _last
    if n <= 0:
        return []
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        if value <= _last and (_last >> 80) == millis:
            value = _last + 1
        _last = value + n - 1
    pairs, shifts = _PAIRS, _SHIFTS
    return [
        f"{prefix}_{''.join([pairs[(v >> shift) & 1023] for shift in shifts])}"
        for v in range(value, value + n)
    ]


def floor_id(prefix: str, at: float) -> str:
    """The lowest id of `prefix` made at epoch second `at` or later: every id that sorts below
    it was made before `at` (to the millisecond), which turns "older than" into a primary-key
    range."""
    value = int(at * 1000) << 80
    return f"{prefix}_{''.join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])}"
