"""Ids: ULID layout (48-bit milliseconds + 80 random bits, Crockford base32), sortable by time."""

from __future__ import annotations

import itertools
import re

from gateway.ids import new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode(ident: str) -> tuple[str, int]:
    """Prefix and 128-bit value of an id, decoded one character at a time (independently of
    how `new_id` encodes)."""
    prefix, _, body = ident.partition("_")
    value = 0
    for ch in body:
        value = value * 32 + CROCKFORD.index(ch)
    return prefix, value


def test_layout_prefix_time_and_alphabet():
    now = 1_700_000_000.123
    ident = new_id("evt", now)
    assert re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", ident)
    prefix, value = decode(ident)
    assert prefix == "evt"
    assert value >> 80 == int(now * 1000)
    assert value < 1 << 128


def test_same_millisecond_ids_keep_creation_order():
    ids = [new_id("msg", 1_700_000_000.5) for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    values = [decode(i)[1] for i in ids]
    assert all(b > a for a, b in itertools.pairwise(values))


def test_ids_sort_by_time_and_round_trip_every_character():
    early, late = new_id("evt", 1_600_000_000.0), new_id("evt", 1_600_000_000.001)
    assert early < late
    # The random part covers the whole alphabet over many ids: every 5-bit group decodes back.
    seen = set()
    for _ in range(300):
        ident = new_id("x")
        _, value = decode(ident)
        rebuilt = "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))
        assert rebuilt == ident[2:]
        seen.update(ident[2:])
    assert seen == set(CROCKFORD)


def test_new_ids_are_consecutive_ordered_and_later_ids_follow_them():
    from gateway.ids import new_ids

    now = 1_700_000_000.5
    before = new_id("evt", now)
    batch = new_ids("evt", 50, now)
    after = new_id("evt", now)
    values = [decode(i)[1] for i in batch]
    assert all(re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", i) for i in batch)
    assert all(v >> 80 == int(now * 1000) for v in values)
    assert values == list(range(values[0], values[0] + 50))  # ULID monotonic: +1 each
    assert before < batch[0] and batch[-1] < after  # same millisecond, still in creation order
    assert new_ids("evt", 0) == []
