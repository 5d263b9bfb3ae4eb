"""gateway.intake.body.split_elements: each element keeps the exact text the provider sent."""

from __future__ import annotations

import json

import pytest

from gateway.intake.body import BodyError, parse_element, split_elements


def raws(body: bytes) -> list[str]:
    return [raw for _, raw in split_elements(body)]


def test_each_element_keeps_its_exact_raw_text_including_inner_whitespace() -> None:
    body = b'[ {"a" :  1,\n  "b":[1, 2]} ,\t{"c":"x"}  ]'
    assert raws(body) == ['{"a" :  1,\n  "b":[1, 2]}', '{"c":"x"}']


def test_number_formats_and_unicode_escapes_are_not_normalised() -> None:
    body = b'[{"price": 1.50, "big": 1E+3, "neg": -0.0, "name": "caf\\u00e9 \\ud83d\\ude00"}]'
    [(value, raw)] = split_elements(body)
    assert raw == '{"price": 1.50, "big": 1E+3, "neg": -0.0, "name": "caf\\u00e9 \\ud83d\\ude00"}'
    assert value["price"] == 1.5
    assert value["name"] == "caf\u00e9 \U0001f600"


def test_raw_utf8_text_is_kept_as_characters() -> None:
    body = '[{"text": "Привет, мир"}]'.encode()
    assert raws(body) == ['{"text": "Привет, мир"}']


def test_values_are_parsed_alongside_the_raw_text() -> None:
    body = b'[{"a": 1}, {"b": [true, null]}]'
    assert [v for v, _ in split_elements(body)] == [{"a": 1}, {"b": [True, None]}]


def test_a_bare_object_is_a_one_element_array() -> None:
    body = b'  {"message_uuid": "u1"}\n'
    assert split_elements(body) == [({"message_uuid": "u1"}, '{"message_uuid": "u1"}')]


@pytest.mark.parametrize("body", [b"[]", b"[ ]", b" [\n\t] \n"])
def test_an_empty_array_has_no_elements(body: bytes) -> None:
    assert split_elements(body) == []


def test_non_object_array_elements_are_returned_for_validation_to_judge() -> None:
    # The format decides per element; splitting must not drop or reject them.
    assert split_elements(b'[1, "x", null, {"a": 1}]') == [
        (1, "1"),
        ("x", '"x"'),
        (None, "null"),
        ({"a": 1}, '{"a": 1}'),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'[{"a": 1}] x',
        b'[{"a": 1}][]',
        b'{"a": 1} {"b": 2}',
        b'{"a": 1},',
    ],
)
def test_trailing_garbage_is_malformed(body: bytes) -> None:
    with pytest.raises(BodyError) as e:
        split_elements(body)
    assert e.value.code == "malformed_json"
    assert "unexpected data" in str(e.value)


@pytest.mark.parametrize(
    "body",
    [
        b"[",
        b'[{"a": 1}',
        b'[{"a": 1},]',
        b'[{"a": 1} {"b": 2}]',
        b'[{"a": }]',
        b"{",
        b"[,]",
        b"nope",
    ],
)
def test_malformed_json_raises_a_body_error(body: bytes) -> None:
    with pytest.raises(BodyError) as e:
        split_elements(body)
    assert e.value.code == "malformed_json"


@pytest.mark.parametrize("body", [b'"a string"', b"42", b"null", b"true"])
def test_a_top_level_scalar_is_rejected(body: bytes) -> None:
    with pytest.raises(BodyError, match="expected a JSON array"):
        split_elements(body)


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\r\t", b"\xef\xbb\xbf", b"\xef\xbb\xbf  "])
def test_an_empty_body_has_its_own_code(body: bytes) -> None:
    with pytest.raises(BodyError) as e:
        split_elements(body)
    assert e.value.code == "empty_body"


def test_invalid_utf8_names_the_byte_offset() -> None:
    with pytest.raises(BodyError) as e:
        split_elements(b'[{"a": "\xff"}]')
    assert e.value.code == "invalid_encoding"
    assert "byte 8" in str(e.value)


def test_a_leading_utf8_bom_is_ignored_and_not_part_of_the_raw_text() -> None:
    body = b'\xef\xbb\xbf[{"a": 1}]'
    assert split_elements(body) == [({"a": 1}, '{"a": 1}')]


def test_moderate_nesting_is_kept_verbatim() -> None:
    inner = "[" * 50 + "]" * 50
    body = f'[{{"deep": {inner}}}]'.encode()
    [(value, raw)] = split_elements(body)
    assert raw == f'{{"deep": {inner}}}'
    assert json.loads(raw) == value


def test_absurd_nesting_is_a_body_error_not_a_crash() -> None:
    body = b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]"
    with pytest.raises(BodyError) as e:
        split_elements(body)
    assert e.value.code == "malformed_json"
    assert "nested too deeply" in str(e.value)


def test_the_error_message_says_where_the_json_broke() -> None:
    with pytest.raises(BodyError, match="line 2 column"):
        split_elements(b'[\n{"a" 1}]')


# -- strict JSON (RFC 8259 with I-JSON's number and string rules) -------------------------------


@pytest.mark.parametrize(
    "literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1E+309", b"1" + b"0" * 400 + b".5"]
)
def test_values_strict_json_has_no_number_for_are_malformed(literal: bytes) -> None:
    with pytest.raises(BodyError) as info:
        split_elements(b'[{"ok": 1}, {"x": ' + literal + b"}]")
    assert info.value.code == "malformed_json"
    assert info.value.status == 400


def test_an_integer_of_five_thousand_digits_is_malformed_not_a_crash() -> None:
    with pytest.raises(BodyError) as info:
        split_elements(b'[{"x": ' + b"7" * 5000 + b"}]")
    assert "does not fit a double" in str(info.value)
    assert "5000 digits" in str(info.value)


def test_numbers_that_fit_a_double_are_kept_verbatim() -> None:
    big = "9" * 300  # an integer above 2**53 still fits a double's range
    body = f'[{{"a": {big}, "b": 1e-400, "c": 1.7976931348623157e308, "d": -0}}]'.encode()
    [(value, raw)] = split_elements(body)
    assert raw == body.decode()[1:-1]
    assert value["a"] == int(big)
    assert value["b"] == 0.0


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDFFF", b"x\\ud83d", b"\\ude00\\ud83d"])
def test_a_lone_surrogate_escape_is_malformed(escape: bytes) -> None:
    with pytest.raises(BodyError) as info:
        split_elements(b'[{"text": "' + escape + b'"}]')
    assert "surrogate" in str(info.value)


def test_a_lone_surrogate_in_a_key_is_malformed() -> None:
    with pytest.raises(BodyError):
        split_elements(b'{"\\udbff": 1}')


def test_a_surrogate_pair_is_one_character_and_fine() -> None:
    [(value, _)] = split_elements(b'[{"text": "\\ud83d\\ude00 \\\\ud800"}]')
    assert value["text"] == "\U0001f600 \\ud800"


def test_repeated_keys_are_reported_per_element_not_as_malformed() -> None:
    elements = split_elements(b'[{"a": 1, "a": 2}, {"b": 1}, {"c": {"d": 1, "d": 1, "e": 0}}]')
    assert elements[0][1] == '{"a": 1, "a": 2}'
    assert elements.duplicates == {0: ["a"], 2: ["d"]}


def test_too_many_elements_is_413_and_parsing_stops_at_the_limit() -> None:
    assert len(split_elements(b"[1, 2, 3]", max_events=3)) == 3
    with pytest.raises(BodyError) as info:
        # The fourth element is not even JSON: the limit is hit before it is parsed.
        split_elements(b"[1, 2, 3, nonsense", max_events=3)
    assert (info.value.status, info.value.code) == (413, "too_many_events")
    assert "more than 3 elements" in str(info.value)


def test_parse_element_reports_repeated_keys_and_refuses_non_strict_json() -> None:
    problem = "duplicate key 'a': the element is ambiguous"
    assert parse_element('{"a": 1, "a": 2}') == ({"a": 2}, [problem])
    assert parse_element("[1, 2]") == ([1, 2], [])
    with pytest.raises(BodyError):
        parse_element('{"a": NaN}')
