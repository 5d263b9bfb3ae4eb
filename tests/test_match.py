"""Route `match:` conditions and `when:` expressions, compiled and evaluated on their own."""

from __future__ import annotations

import pytest

from gateway.conditions.expressions import ExpressionError, compile_when, evaluate_when
from gateway.conditions.match import MatchSpecError, compile_match

EVENT = {
    "message_uuid": "m-1",
    "channel_type": "WHATSAPP",
    "callback_event": "delivered",
    "status": "undelivered",
    "status_time": "2020-10-16T18:51:13Z",
    "error_code": 6969,
    "cascade_step": 2,
    "item": {"contentType": "text", "text": "hi"},
    "flag": True,
    "nothing": None,
}


def holds(spec: dict, event: dict = EVENT) -> bool:
    return compile_match(spec).check(event) is None


def test_scalar_value_means_equality():
    assert holds({"status": "undelivered"})
    assert not holds({"status": "delivered"})


def test_several_keys_are_anded():
    assert holds({"status": "undelivered", "channel_type": "WHATSAPP"})
    assert not holds({"status": "undelivered", "channel_type": "SMS"})


def test_list_value_means_any_of():
    assert holds({"status": ["undelivered", "unsent"]})
    assert not holds({"status": ["sent", "delivered"]})


def test_list_items_may_be_operators():
    assert holds({"error_code": [7060, {"gte": 6000, "lt": 7000}]})
    assert not holds({"error_code": [7060, {"lt": 6000}]})


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"gte": 6969}, True),
        ({"gte": 6970}, False),
        ({"gt": 6968}, True),
        ({"gt": 6969}, False),
        ({"lte": 6969}, True),
        ({"lte": 6968}, False),
        ({"lt": 6970}, True),
        ({"lt": 6969}, False),
        ({"gte": 6000, "lt": 7000}, True),
        ({"gte": 6000, "lt": 6500}, False),
    ],
)
def test_numeric_comparisons(spec, expected):
    assert holds({"error_code": spec}) is expected


def test_comparisons_never_match_a_missing_or_non_numeric_field():
    assert not holds({"price": {"gte": 0}})
    assert not holds({"status": {"gte": 1}})
    assert not holds({"flag": {"gte": 0}})  # a boolean is not a number here


def test_string_comparison_suits_iso_times():
    assert holds({"status_time": {"gte": "2020-10-16T00:00:00Z"}})
    assert not holds({"status_time": {"lt": "2020-01-01"}})


def test_glob_matches_the_whole_value_case_sensitively():
    assert holds({"message_uuid": {"glob": "m-*"}})
    assert holds({"error_code": {"glob": "69*"}})  # numbers are matched as their text
    assert not holds({"message_uuid": {"glob": "M-*"}})
    assert not holds({"message_uuid": {"glob": "-1"}})


def test_regex_searches_anywhere_unless_anchored():
    assert holds({"status": {"regex": "deliver"}})
    assert not holds({"status": {"regex": "^deliver"}})
    assert holds({"status": {"regex": "^(un)?delivered$"}})


def test_exists_means_present_and_not_null():
    assert holds({"error_code": {"exists": True}})
    assert holds({"price": {"exists": False}})
    assert holds({"nothing": {"exists": False}})
    assert not holds({"nothing": {"exists": True}})


def test_dotted_keys_reach_into_objects():
    assert holds({"item.contentType": "text"})
    assert not holds({"item.contentType": "image"})
    assert not holds({"item.missing.deeper": {"exists": True}})


def test_a_literal_key_with_dots_wins_over_the_path():
    assert holds({"a.b": 1}, {"a.b": 1, "a": {"b": 2}})


def test_booleans_and_numbers_are_not_confused():
    assert holds({"flag": True})
    assert not holds({"cascade_step": True}, {"cascade_step": 1})
    assert not holds({"flag": 1})


def test_empty_match_matches_everything():
    assert holds({}, {})


def test_a_failed_match_says_which_key_and_why():
    why = compile_match({"status": ["sent", "read"]}).check(EVENT)
    assert why == "status is 'undelivered', wanted any of ['sent', 'read']"
    why = compile_match({"price": {"gte": 1}}).check(EVENT)
    assert why == "price is missing, wanted gte 1"


def test_bad_operators_are_reported_per_key_with_a_hint():
    with pytest.raises(MatchSpecError) as e:
        compile_match({"error_code": {"gtee": 1}, "status": {"regex": "("}, "x": {"exists": "y"}})
    problems = dict(e.value.problems)
    assert "did you mean 'gte'" in problems["error_code"]
    assert "invalid regex" in problems["status"]
    assert "exists takes true or false" in problems["x"]


def test_when_expressions_see_event_and_meta():
    when = compile_when('event.status in ["undelivered", "unsent"] and meta.source == "revicom"')
    assert evaluate_when(when, EVENT, {"source": "revicom"}) == (True, None)
    assert evaluate_when(when, EVENT, {"source": "other"}) == (False, None)


def test_when_treats_missing_fields_as_undefined_and_false():
    assert evaluate_when(compile_when("event.item.nope.deeper"), EVENT, {}) == (False, None)
    assert evaluate_when(compile_when("event.price == 1"), EVENT, {}) == (False, None)


def test_when_that_fails_at_runtime_does_not_hold_and_says_why():
    holds_, error = evaluate_when(compile_when("event.price >= 1"), EVENT, {})
    assert holds_ is False
    assert "price" in error


def test_when_is_sandboxed():
    holds_, error = evaluate_when(compile_when("event.__class__.__mro__"), EVENT, {})
    assert holds_ is False
    when = compile_when("event.item.update({'x': 1})")
    holds_, error = evaluate_when(when, EVENT, {})
    assert holds_ is False and error is not None
    assert "x" not in EVENT["item"]


def test_when_syntax_errors_are_caught_at_compile_time():
    with pytest.raises(ExpressionError, match="invalid expression"):
        compile_when("event.status ==")
    with pytest.raises(ExpressionError):
        compile_when("   ")
