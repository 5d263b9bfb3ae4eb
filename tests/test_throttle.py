"""gateway.intake.throttle: failed authentications per client address, in fixed windows."""

from __future__ import annotations

from gateway.intake.throttle import FailureThrottle


def test_an_address_is_throttled_after_max_failures_until_the_window_ends() -> None:
    throttle = FailureThrottle(max_failures=3, window=60)
    assert [throttle.failed("6.6.6.6", t) for t in (0, 1, 2)] == [False, False, True]
    assert throttle.retry_after("6.6.6.6", 2) == 58
    assert throttle.retry_after("6.6.6.6", 59.5) == 0.5
    assert throttle.retry_after("6.6.6.6", 60) is None
    assert not throttle.failed("6.6.6.6", 61)  # a new window starts counting from one


def test_other_addresses_are_not_affected() -> None:
    throttle = FailureThrottle(max_failures=2, window=60)
    throttle.failed("6.6.6.6", 0)
    throttle.failed("6.6.6.6", 0)
    assert throttle.retry_after("6.6.6.6", 1) is not None
    assert throttle.retry_after("185.203.96.7", 1) is None


def test_below_the_limit_nothing_is_throttled_and_a_success_clears_the_count() -> None:
    throttle = FailureThrottle(max_failures=3, window=60)
    throttle.failed("6.6.6.6", 0)
    throttle.failed("6.6.6.6", 0)
    assert throttle.retry_after("6.6.6.6", 0) is None
    throttle.succeeded("6.6.6.6")
    throttle.failed("6.6.6.6", 1)
    throttle.failed("6.6.6.6", 1)
    assert throttle.retry_after("6.6.6.6", 1) is None


def test_ipv6_addresses_count_per_64() -> None:
    throttle = FailureThrottle(max_failures=2, window=60)
    throttle.failed("2001:db8:1:2::1", 0)
    throttle.failed("2001:db8:1:2:ffff::9", 0)
    assert throttle.retry_after("2001:db8:1:2::77", 0) is not None
    assert throttle.retry_after("2001:db8:1:3::1", 0) is None


def test_an_ipv4_mapped_address_is_its_ipv4_address() -> None:
    throttle = FailureThrottle(max_failures=1, window=60)
    throttle.failed("::ffff:6.6.6.6", 0)
    assert throttle.retry_after("6.6.6.6", 0) is not None


def test_a_spray_of_addresses_keeps_memory_bounded() -> None:
    throttle = FailureThrottle(max_failures=1, window=60, max_addresses=100)
    for i in range(10_000):
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 0)
    assert len(throttle._seen) == 100
    assert throttle.retry_after("10.0.39.15", 0) is not None  # the most recent is kept


def test_zero_max_failures_never_throttles() -> None:
    throttle = FailureThrottle(max_failures=0, window=60)
    for _ in range(100):
        throttle.failed("6.6.6.6", 0)
    assert throttle.retry_after("6.6.6.6", 0) is None
