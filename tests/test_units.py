"""Durations, sizes and rates as the configuration writes them (gateway/units.py)."""

from __future__ import annotations

import pytest

from gateway.units import Rate, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("7d", 7 * 86400.0),
        ("1.5h", 5400.0),
        ("30", 30.0),
        (" 5 s ", 5.0),
        ("0s", 0.0),
    ],
)
def test_duration_strings_are_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(0, 0.0), (5, 5.0), (2.5, 2.5)])
def test_duration_numbers_are_seconds(number: float, seconds: float) -> None:
    result = parse_duration(number)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize("bad", ["", "5x", "m", "5 sec", "-5s", "five", "5s5", None, [5], {"s": 5}])
def test_duration_garbage_is_rejected_with_an_example(bad: object) -> None:
    with pytest.raises(ValueError, match="duration like"):
        parse_duration(bad)


@pytest.mark.parametrize("flag", [True, False])
def test_duration_rejects_booleans_although_they_are_ints(flag: bool) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(flag)


@pytest.mark.parametrize("negative", [-1, -0.5])
def test_duration_cannot_be_negative(negative: float) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(negative)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512KiB", 512 * 1024),
        ("1MiB", 1024 * 1024),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("1GB", 1_000_000_000),
        ("100B", 100),
        ("100", 100),
        ("1.5KiB", 1536),
        (" 1 MiB ", 1024 * 1024),
    ],
)
def test_size_strings_are_bytes(text: str, size: int) -> None:
    result = parse_size(text)
    assert result == size
    assert isinstance(result, int)


def test_size_numbers_are_bytes() -> None:
    assert parse_size(0) == 0
    assert parse_size(1048576) == 1048576


@pytest.mark.parametrize("bad", ["", "1XB", "MiB", "1 mebibyte", "-1KiB", -1, None, 1.5, [1]])
def test_size_garbage_and_negatives_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="size like"):
        parse_size(bad)


@pytest.mark.parametrize("flag", [True, False])
def test_size_rejects_booleans(flag: bool) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(flag)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("1/s", 1.0), ("30/m", 0.5), ("3600/h", 1.0), ("0.5/s", 0.5), (" 2 / s ", 2.0)],
)
def test_rate_strings_give_tokens_per_second_with_a_burst_of_one(
    text: str, per_second: float
) -> None:
    rate = parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert rate.burst == 1


def test_rate_mapping_sets_the_burst() -> None:
    assert parse_rate({"rate": "5/s", "burst": 10}) == Rate(5.0, 10)
    assert parse_rate({"rate": "5/s"}) == Rate(5.0, 1)


def test_rate_passes_an_existing_rate_through() -> None:
    rate = Rate(2.0, 3)
    assert parse_rate(rate) is rate


@pytest.mark.parametrize("bad", ["", "1", "1/d", "1/sec", "/s", "-1/s", "fast", None, True, 5])
def test_rate_garbage_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="rate like"):
        parse_rate(bad)


def test_rate_of_zero_is_rejected() -> None:
    with pytest.raises(ValueError, match="above zero"):
        parse_rate("0/s")


@pytest.mark.parametrize("burst", [0, -1, True, 1.5, "10"])
def test_rate_burst_must_be_a_whole_number_of_at_least_one(burst: object) -> None:
    with pytest.raises(ValueError, match="burst"):
        parse_rate({"rate": "1/s", "burst": burst})


def test_rate_mapping_rejects_unknown_keys_and_a_missing_rate() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        parse_rate({"rate": "1/s", "brust": 2})
    with pytest.raises(ValueError, match="rate like"):
        parse_rate({"burst": 2})


@pytest.mark.parametrize("not_a_number", [float("nan"), "nan", ".nan"])
def test_duration_rejects_nan(not_a_number: object) -> None:
    # YAML spells NaN `.nan`; a NaN lease or timeout compares false with everything.
    with pytest.raises(ValueError):
        parse_duration(not_a_number)
