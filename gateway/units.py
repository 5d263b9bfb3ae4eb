"""Parsing of durations (`250ms`, `5s`, `10m`, `24h`, `7d`), sizes (`512KiB`, `1MiB`) and rates
(`1/s`, `30/m`).

Each parser accepts what the config documents and raises `ValueError` with a message that says
what was expected; the config layer adds the key path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like `250ms`, `5s`, `10m`, `24h`, `7d`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 10m or 24h")
    if isinstance(value, int | float):
        if math.isnan(value) or value < 0:
            raise ValueError("a duration cannot be negative or NaN")
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 250ms, 5s, 10m or 24h, got {value!r}")


def parse_size(value: object) -> int:
    """Bytes from a number or a string like `512KiB`, `1MiB`."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512KiB or 1MiB")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.match(value)):
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"expected a size like 1048576, 512KiB or 1MiB, got {value!r}")


@dataclass(frozen=True)
class Rate:
    """A token-bucket rate: `per_second` tokens refill per second, at most `burst` saved up."""

    per_second: float
    burst: int = 1


def parse_rate(value: object) -> Rate:
    """A `Rate` from `"1/s"`, `"30/m"` or `{rate: "5/s", burst: 10}`."""
    if isinstance(value, Rate):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"rate", "burst"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; a rate takes 'rate' and 'burst'")
        burst = value.get("burst", 1)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ValueError("burst must be a whole number of at least 1")
        return Rate(parse_rate(value.get("rate")).per_second, burst)
    if isinstance(value, str) and (m := _RATE.match(value)):
        per_second = float(m.group(1)) / _RATE_UNITS[m.group(2)]
        if per_second <= 0:
            raise ValueError("a rate must be above zero")
        return Rate(per_second)
    raise ValueError(f"expected a rate like 1/s or 30/m, got {value!r}")
