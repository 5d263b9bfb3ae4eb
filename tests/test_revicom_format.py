"""Source formats: the provider's contract (plugins/revicom.py) and generic JSON
(plugins/json_format.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from gateway_plugins.json_format import _MISSING, JsonFormat, JsonOptions, resolve_pointer
from gateway_plugins.revicom import RevicomFormat
from pydantic import ValidationError

import gateway.samples

SAMPLES = Path(gateway.samples.__file__).parent
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))

DELIVERED = {
    "message_uuid": "063474ec-a34f-4558-90c5-984395000004",
    "channel_type": "SMS",
    "callback_event": "delivered",
    "status": "delivered",
    "status_time": "2020-10-16T18:51:13Z",
}
PRICE = {
    "message_uuid": "063474ec-a34f-4558-90c5-984395000004",
    "channel_type": "SMS",
    "callback_event": "price",
    "parts": 2,
    "price": 2.5,
    "currency": "RUB",
    "price_time": "2020-10-16T18:51:13Z",
}
CLICK = {
    "message_uuid": "063474ec-a34f-4558-90c5-984395000004",
    "channel_type": "SMS",
    "callback_event": "click",
    "url": "https://example.com/offer?id=1",
    "short_url": "https://s.example/AbC12",
    "click_time": "2020-10-16T19:02:11Z",
}
INBOUND = {
    "message_uuid": "0b2f6a10-a34f-4558-90c5-984395000009",
    "callback_event": "inbound_sent",
    "channel_type": "WHATSAPP",
    "status": "inbound_sent",
    "status_time": "2020-10-16T18:51:13Z",
    "item": {"contentType": "text", "text": "Hello"},
}
BY_EVENT = {"delivered": DELIVERED, "price": PRICE, "click": CLICK, "inbound_sent": INBOUND}


@pytest.fixture
def fmt() -> RevicomFormat:
    return RevicomFormat()


def key(
    fmt: Any, element: dict[str, Any], headers: dict[str, str] | None = None, index: int = 0
) -> str:
    return fmt.dedupe_key(element, json.dumps(element), headers or {}, index)


def changed(element: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(element)
    out.update(fields)
    return out


def without(element: dict[str, Any], name: str) -> dict[str, Any]:
    out = copy.deepcopy(element)
    del out[name]
    return out


# -- check ------------------------------------------------------------------------------------


def test_the_package_ships_every_contract_sample() -> None:
    names = {p.stem for p in SAMPLE_FILES}
    assert {
        "delivered",
        "delivered-undelivered",
        "unsent",
        "sent",
        "read",
        "unread",
        "price",
        "click",
        "inbound",
        "batch-mixed",
    } <= names


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_every_sample_element_passes_the_check(path: Path, fmt: RevicomFormat) -> None:
    body = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(body, list) and body
    for element in body:
        assert fmt.check(element) == []


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
def test_every_sample_element_has_a_key_and_a_description(path: Path, fmt: RevicomFormat) -> None:
    for element in json.loads(path.read_text(encoding="utf-8")):
        assert isinstance(key(fmt, element), str)
        assert fmt.describe(element) == (element["message_uuid"], element["callback_event"])


REQUIRED = [
    ("delivered", "message_uuid"),
    ("delivered", "channel_type"),
    ("delivered", "callback_event"),
    ("delivered", "status"),
    ("delivered", "status_time"),
    ("price", "price"),
    ("price", "currency"),
    ("price", "price_time"),
    ("click", "short_url"),
    ("click", "click_time"),
    ("inbound_sent", "status"),
    ("inbound_sent", "status_time"),
]


@pytest.mark.parametrize(("event", "field"), REQUIRED)
def test_a_missing_required_field_is_a_problem_naming_it(
    event: str, field: str, fmt: RevicomFormat
) -> None:
    problems = fmt.check(without(BY_EVENT[event], field))
    assert any(p.startswith(f"{field}: ") and "missing" in p for p in problems), problems


@pytest.mark.parametrize(("event", "field"), REQUIRED)
def test_a_null_required_field_counts_as_missing(
    event: str, field: str, fmt: RevicomFormat
) -> None:
    problems = fmt.check(changed(BY_EVENT[event], **{field: None}))
    assert any(p.startswith(f"{field}: ") for p in problems), problems


@pytest.mark.parametrize(
    ("event", "field", "value"),
    [
        ("delivered", "message_uuid", 123),
        ("delivered", "channel_type", ["SMS"]),
        ("delivered", "status", 1),
        ("delivered", "status_time", "yesterday"),
        ("delivered", "status_time", 1602874273),
        ("delivered", "error_code", "6969"),
        ("delivered", "error_code", 69.5),
        ("delivered", "cascade_step", "2"),
        ("delivered", "cascade_message_uuid", 7),
        ("price", "price", "2.5"),
        ("price", "currency", 643),
        ("price", "parts", 2.0),
        ("price", "price_time", "2020-13-45T99:00:00Z"),
        ("click", "short_url", {"href": "x"}),
        ("click", "url", 5),
        ("click", "click_time", 0),
        ("inbound_sent", "item", "text"),
    ],
)
def test_a_wrongly_typed_field_is_a_problem_naming_it(
    event: str, field: str, value: Any, fmt: RevicomFormat
) -> None:
    problems = fmt.check(changed(BY_EVENT[event], **{field: value}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: expected "), problems


@pytest.mark.parametrize(
    ("event", "field"),
    [("delivered", "error_code"), ("delivered", "cascade_step"), ("price", "parts")],
)
def test_a_boolean_is_not_an_integer(event: str, field: str, fmt: RevicomFormat) -> None:
    problems = fmt.check(changed(BY_EVENT[event], **{field: True}))
    assert len(problems) == 1 and problems[0].startswith(f"{field}: "), problems
    assert "bool" in problems[0]


def test_a_boolean_is_not_a_price(fmt: RevicomFormat) -> None:
    problems = fmt.check(changed(PRICE, price=False))
    assert len(problems) == 1 and problems[0].startswith("price: "), problems


def test_an_integer_price_is_a_number(fmt: RevicomFormat) -> None:
    assert fmt.check(changed(PRICE, price=3)) == []


@pytest.mark.parametrize("field", ["error_code", "cascade_step", "cascade_message_uuid"])
def test_optional_fields_may_be_null_or_absent(field: str, fmt: RevicomFormat) -> None:
    assert fmt.check(changed(DELIVERED, **{field: None})) == []
    assert fmt.check(DELIVERED) == []


@pytest.mark.parametrize("event", ["price", "click", "inbound_sent"])
def test_fields_optional_for_an_event_may_be_absent(event: str, fmt: RevicomFormat) -> None:
    optional = {"price": "parts", "click": "url", "inbound_sent": "item"}[event]
    assert fmt.check(without(BY_EVENT[event], optional)) == []


def test_unknown_fields_are_kept_and_are_not_problems(fmt: RevicomFormat) -> None:
    element = changed(DELIVERED, future_field={"any": ["thing"]}, sms_count=3)
    before = copy.deepcopy(element)
    assert fmt.check(element) == []
    assert element == before, "check must not drop or change fields"


def test_any_channel_type_string_is_accepted(fmt: RevicomFormat) -> None:
    assert fmt.check(changed(DELIVERED, channel_type="TELEGRAM")) == []


def test_an_unknown_callback_event_is_a_problem(fmt: RevicomFormat) -> None:
    problems = fmt.check(changed(DELIVERED, callback_event="exploded"))
    assert any(p.startswith("callback_event: ") and "exploded" in p for p in problems), problems


def test_a_non_string_callback_event_is_a_problem(fmt: RevicomFormat) -> None:
    problems = fmt.check(changed(DELIVERED, callback_event=5))
    assert any(p.startswith("callback_event: expected ") for p in problems), problems


@pytest.mark.parametrize("element", [[], "delivered", 5, None, True])
def test_an_element_that_is_not_an_object_is_one_problem(element: Any, fmt: RevicomFormat) -> None:
    problems = fmt.check(element)
    assert len(problems) == 1 and "expected an object" in problems[0]
    assert fmt.describe(element) == (None, None)


def test_several_problems_in_one_element_are_all_reported(fmt: RevicomFormat) -> None:
    problems = fmt.check({"callback_event": "delivered", "error_code": "x", "status_time": 1})
    fields = sorted(p.split(":", 1)[0] for p in problems)
    assert fields == ["channel_type", "error_code", "message_uuid", "status", "status_time"]


def test_describe_ignores_values_of_the_wrong_type(fmt: RevicomFormat) -> None:
    assert fmt.describe({"message_uuid": 5, "callback_event": "sent"}) == (None, "sent")


# -- dedupe keys ------------------------------------------------------------------------------


def test_a_resend_has_the_same_key(fmt: RevicomFormat) -> None:
    resend = json.loads(json.dumps(DELIVERED))
    assert key(fmt, DELIVERED) == key(fmt, resend)


def test_the_key_ignores_field_order_headers_and_position(fmt: RevicomFormat) -> None:
    reordered = dict(reversed(list(DELIVERED.items())))
    assert key(fmt, reordered, {"x-request-id": "other"}, index=3) == key(fmt, DELIVERED)


@pytest.mark.parametrize(
    "change",
    [
        {"status": "undelivered"},
        {"status_time": "2020-10-16T18:51:14Z"},
        {"message_uuid": "another"},
        {"callback_event": "read", "status": "delivered"},
    ],
)
def test_status_events_differ_when_their_identity_differs(
    change: dict[str, Any], fmt: RevicomFormat
) -> None:
    assert key(fmt, changed(DELIVERED, **change)) != key(fmt, DELIVERED)


def test_status_keys_ignore_fields_outside_the_identity(fmt: RevicomFormat) -> None:
    assert key(fmt, changed(DELIVERED, error_code=6969, extra="x")) == key(fmt, DELIVERED)


@pytest.mark.parametrize(
    "change",
    [
        {"price": 2.6},
        {"currency": "EUR"},
        {"parts": 3},
        {"price_time": "2020-10-16T18:52:00Z"},
        {"message_uuid": "another"},
    ],
)
def test_price_keys_use_price_currency_parts_and_price_time(
    change: dict[str, Any], fmt: RevicomFormat
) -> None:
    assert key(fmt, changed(PRICE, **change)) != key(fmt, PRICE)


def test_price_keys_ignore_other_fields(fmt: RevicomFormat) -> None:
    assert key(fmt, changed(PRICE, channel_type="VIBER", note="x")) == key(fmt, PRICE)


@pytest.mark.parametrize(
    "change",
    [
        {"short_url": "https://s.example/Other"},
        {"click_time": "2020-10-16T19:03:00Z"},
        {"message_uuid": "another"},
    ],
)
def test_click_keys_use_short_url_and_click_time(
    change: dict[str, Any], fmt: RevicomFormat
) -> None:
    assert key(fmt, changed(CLICK, **change)) != key(fmt, CLICK)


def test_click_keys_ignore_the_long_url(fmt: RevicomFormat) -> None:
    assert key(fmt, changed(CLICK, url="https://example.com/other")) == key(fmt, CLICK)


def test_inbound_keys_use_only_the_message_uuid(fmt: RevicomFormat) -> None:
    other = changed(INBOUND, status_time="2020-10-17T00:00:00Z", item={"text": "changed"})
    assert key(fmt, other) == key(fmt, INBOUND)
    assert key(fmt, changed(INBOUND, message_uuid="another")) != key(fmt, INBOUND)


def test_keys_of_different_event_kinds_never_collide(fmt: RevicomFormat) -> None:
    same_uuid = "u-1"
    elements = [changed(e, message_uuid=same_uuid) for e in BY_EVENT.values()]
    elements.append(
        changed(DELIVERED, message_uuid=same_uuid, callback_event="sent", status="sent")
    )
    keys = {key(fmt, e) for e in elements}
    assert len(keys) == len(elements)


def test_every_element_of_the_mixed_batch_has_its_own_key(fmt: RevicomFormat) -> None:
    batch = json.loads((SAMPLES / "batch-mixed.json").read_text(encoding="utf-8"))
    assert len({key(fmt, e, index=i) for i, e in enumerate(batch)}) == len(batch)


# -- the generic json format ------------------------------------------------------------------


def json_format(**options: Any) -> JsonFormat:
    return JsonFormat(JsonOptions.model_validate(options))


def test_json_default_dedupe_is_by_content_regardless_of_key_order() -> None:
    fmt = JsonFormat()
    a = {"id": 1, "type": "x", "nested": {"b": 1, "a": 2}}
    b = {"nested": {"a": 2, "b": 1}, "type": "x", "id": 1}
    assert key(fmt, a) == key(fmt, b)
    assert key(fmt, a) != key(fmt, changed(a, type="y"))
    assert key(fmt, a, {"x-request-id": "1"}, 0) == key(fmt, a, {"x-request-id": "2"}, 5)


def test_json_pointer_dedupe_uses_only_the_pointed_value() -> None:
    fmt = json_format(dedupe={"pointer": "/meta/id"})
    a = {"meta": {"id": "abc"}, "n": 1}
    assert key(fmt, a) == key(fmt, changed(a, n=2))
    assert key(fmt, a) != key(fmt, {"meta": {"id": "abd"}, "n": 1})
    assert key(fmt, {"meta": {"id": 1}}) != key(fmt, {"meta": {"id": "1"}})


def test_json_pointer_dedupe_falls_back_to_content_when_the_value_is_absent() -> None:
    fmt = json_format(dedupe={"pointer": "/id"})
    assert key(fmt, {"n": 1}) == key(fmt, {"n": 1})
    assert key(fmt, {"n": 1}) != key(fmt, {"n": 2})


def test_json_header_dedupe_uses_the_header_and_the_element_index() -> None:
    fmt = json_format(dedupe={"header": "X-Request-Id"})
    element = {"n": 1}
    first = key(fmt, element, {"x-request-id": "r-1"}, 0)
    assert first == key(fmt, {"n": 2}, {"x-request-id": "r-1"}, 0)
    assert first == key(fmt, element, {"X-Request-Id": "r-1"}, 0)
    assert first != key(fmt, element, {"x-request-id": "r-1"}, 1)
    assert first != key(fmt, element, {"x-request-id": "r-2"}, 0)


def test_json_header_dedupe_falls_back_to_content_without_the_header() -> None:
    fmt = json_format(dedupe={"header": "X-Request-Id"})
    assert key(fmt, {"n": 1}, {}, 0) == key(fmt, {"n": 1}, {}, 4)
    assert key(fmt, {"n": 1}, {}, 0) != key(fmt, {"n": 2}, {}, 0)


def test_json_dedupe_strategies_never_collide_with_each_other() -> None:
    by_pointer = key(json_format(dedupe={"pointer": "/id"}), {"id": "r-1"})
    by_header = key(json_format(dedupe={"header": "h"}), {"id": "r-1"}, {"h": "r-1"}, 0)
    by_content = key(JsonFormat(), {"id": "r-1"})
    assert len({by_pointer, by_header, by_content}) == 3


def test_json_required_pointers_must_be_present_and_not_null() -> None:
    fmt = json_format(required=["/id", "/data/type"])
    assert fmt.check({"id": 1, "data": {"type": "x"}, "more": True}) == []
    assert fmt.check({"id": None, "data": {}}) == [
        "/id: required field is missing",
        "/data/type: required field is missing",
    ]
    assert fmt.check("not an object") == [
        "/id: required field is missing",
        "/data/type: required field is missing",
    ]


def test_json_accepts_anything_without_required_pointers() -> None:
    fmt = JsonFormat()
    for element in ({}, [], "x", 1, None):
        assert fmt.check(element) == []


def test_json_describe_reads_the_configured_pointers() -> None:
    fmt = json_format(message_uuid="/msg/id", event="/type")
    assert fmt.describe({"msg": {"id": 42}, "type": "sent"}) == ("42", "sent")
    assert fmt.describe({"type": None}) == (None, None)
    assert JsonFormat().describe({"message_uuid": "x"}) == (None, None)


@pytest.mark.parametrize(
    "options",
    [
        {"dedupe": {"pointer": "id"}},
        {"required": ["id"]},
        {"dedupe": {"pointer": "/id", "header": "X-Id"}},
        {"dedupe": {"pointer": "/id", "content": True}},
        {"dedupe": {"pointr": "/id"}},
        {"unknown": 1},
    ],
)
def test_json_options_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JsonOptions.model_validate(options)


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", {"a": {"b": [10, 20]}, "x/y": 1, "m~n": 2, "": 3}),
        ("/a/b/1", 20),
        ("/x~1y", 1),
        ("/m~0n", 2),
        ("/", 3),
    ],
)
def test_resolve_pointer_follows_rfc_6901(pointer: str, expected: Any) -> None:
    doc = {"a": {"b": [10, 20]}, "x/y": 1, "m~n": 2, "": 3}
    assert resolve_pointer(doc, pointer) == expected


@pytest.mark.parametrize("pointer", ["/nope", "/a/b/2", "/a/b/-1", "/a/b/x", "/a/b/1/c"])
def test_resolve_pointer_reports_absent_paths(pointer: str) -> None:
    assert resolve_pointer({"a": {"b": [10, 20]}}, pointer) is _MISSING


def test_resolve_pointer_keeps_empty_keys_after_the_leading_slash() -> None:
    # RFC 6901: "//a" is the key "" and then the key "a"; only the first "/" is a prefix.
    assert resolve_pointer({"": {"a": 1}, "a": 2}, "//a") == 1
