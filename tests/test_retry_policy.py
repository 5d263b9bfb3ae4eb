"""The retry policy (gateway/delivery/retry.py): pure decisions from a delivery record and an
outcome, on explicit times."""

from __future__ import annotations

import pytest

from gateway.config.models import RetryConfig
from gateway.delivery.retry import RetryPolicy
from gateway.destination.base import Outcome
from gateway.store import DeliveryRecord

T0 = 1_000_000.0


def record(attempts: int = 0, first: float | None = None) -> DeliveryRecord:
    return DeliveryRecord(
        id="msg_1",
        event_id="evt_1",
        source="s",
        route="r",
        destination="d",
        state="in_flight",
        attempts=attempts,
        next_attempt_at=T0,
        created_at=T0 - 5000,
        updated_at=T0,
        first_attempt_at=first,
    )


@pytest.fixture
def policy() -> RetryPolicy:
    return RetryPolicy(RetryConfig(attempts=5, initial=1.0, max_interval=60.0, max_age=3600.0))


def test_delivered_counts_one_try_and_has_no_next_time(policy):
    d = policy.decide(record(), Outcome.delivered(200), T0, T0)
    assert (d.state, d.attempt_outcome, d.next_attempt_at, d.counts, d.error) == (
        "delivered",
        "delivered",
        None,
        True,
        None,
    )


def test_permanent_is_dead_at_once(policy):
    d = policy.decide(record(), Outcome.permanent("HTTP 400"), T0, T0)
    assert (d.state, d.counts, d.error) == ("dead", True, "HTTP 400")


@pytest.mark.parametrize(("done", "base"), [(0, 1), (1, 2), (2, 4), (3, 8)])
def test_backoff_doubles_from_initial_and_is_jittered_down_by_at_most_a_quarter(policy, done, base):
    waits = [
        policy.decide(record(done, T0), Outcome.retry("x"), T0, T0).next_attempt_at - T0
        for _ in range(200)
    ]
    assert all(0.75 * base <= w <= base for w in waits)
    assert len(set(waits)) > 1  # jittered


def test_backoff_never_exceeds_max_interval():
    p = RetryPolicy(RetryConfig(attempts=100, initial=1.0, max_interval=60.0, max_age=1e9))
    for tries in range(1, 40):
        assert 45.0 <= p.backoff(tries) <= 60.0 or tries < 7


def test_attempts_is_the_total_number_of_tries(policy):
    assert policy.decide(record(3, T0), Outcome.retry("HTTP 503"), T0, T0).state == "pending"
    d = policy.decide(record(4, T0), Outcome.retry("HTTP 503"), T0, T0)
    assert (d.state, d.counts) == ("dead", True)
    assert d.error == "HTTP 503 (gave up after 5 tries)"


def test_one_attempt_means_no_retry():
    p = RetryPolicy(RetryConfig(attempts=1))
    assert p.decide(record(), Outcome.retry("x"), T0, T0).state == "dead"


def test_max_age_counts_from_the_first_try_not_from_creation(policy):
    # created 5000s ago (more than max_age), never tried: still gets its retries
    d = policy.decide(record(0, None), Outcome.retry("x"), T0, T0)
    assert d.state == "pending"
    d = policy.decide(record(1, T0 - 3600), Outcome.retry("x"), T0, T0)
    assert d.state == "dead"
    assert "max_age 3600s reached" in d.error


def test_a_backoff_is_shortened_to_land_on_the_max_age_deadline(policy):
    d = policy.decide(record(3, T0 - 3599.5), Outcome.retry("x"), T0, T0)
    assert d.next_attempt_at == pytest.approx(T0 + 0.5)


def test_retry_after_is_honoured_above_max_interval(policy):
    d = policy.decide(record(1, T0), Outcome.retry("HTTP 503", 503, retry_after=300), T0, T0)
    assert (d.state, d.next_attempt_at, d.counts) == ("pending", T0 + 300, True)


def test_retry_after_beyond_max_age_is_dead(policy):
    d = policy.decide(record(1, T0 - 3000), Outcome.throttled("HTTP 429", 601), T0, T0)
    assert d.state == "dead"
    assert "Retry-After 601s would pass max_age 3600s" in d.error


def test_a_429_does_not_count_toward_attempts(policy):
    d = policy.decide(record(4, T0), Outcome.throttled("HTTP 429", 10), T0, T0)
    assert (d.state, d.attempt_outcome, d.counts, d.next_attempt_at) == (
        "pending",
        "throttled",
        False,
        T0 + 10,
    )


def test_a_429_without_retry_after_waits_at_least_as_long_as_the_delivery_has_waited(policy):
    d = policy.decide(record(0, T0 - 40), Outcome.throttled("HTTP 429", None), T0, T0)
    assert d.next_attempt_at == T0 + 40
    d = policy.decide(record(0, T0 - 400), Outcome.throttled("HTTP 429", None), T0, T0)
    assert d.next_attempt_at == T0 + 60  # capped at max_interval


def test_a_429_still_ages_the_delivery(policy):
    d = policy.decide(record(0, T0 - 3600), Outcome.throttled("HTTP 429", None), T0, T0)
    assert d.state == "dead"


def test_times_come_from_the_arguments_not_the_wall_clock(policy):
    d = policy.decide(record(0, None), Outcome.retry("x"), 5.0, 7.0)
    assert 7.75 <= d.next_attempt_at <= 8.0
