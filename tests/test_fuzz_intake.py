"""Fuzzing intake with Hypothesis: the body parser in process, then a real gateway over HTTP.

Bodies are built from JSON-ish pieces that have broken intake before (numbers beyond a double,
NaN, lone surrogate escapes, repeated keys, deep nesting, truncation, random bytes). Properties:

- the parser either returns elements or raises `BodyError`; every element it returns is strict
  JSON text that parses back to its value; it accepts every body a strict reference parser
  accepts;
- the gateway never answers 5xx; a request answered other than 200 stores nothing; a 200 stores
  exactly its accepted and quarantined elements.

Example counts are bounded so the module runs in a few seconds (plus one server start).
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from gateway_process import GatewayProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.intake.body import BodyError, split_elements

# -- JSON-ish text ------------------------------------------------------------------------------

HAZARDS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1E+309",
    "1.5e-400",
    "9" * 400,
    "7" * 5000,
    "-0",
    "0.0e0",
    '"\\ud800"',
    '"\\udfff x"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    '"a\\"b"',
    "[" * 50 + "]" * 50,
    "[" * 5000,
    '"\\x"',
    "01",
    "1.",
    ".5",
    "+1",
    "tru",
    "nul",
]
scalars = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=12).map(json.dumps),
    st.sampled_from(HAZARDS),
)
keys = st.one_of(
    st.sampled_from(['"message_uuid"', '"status"', '"callback_event"', '"a"']),
    st.text(max_size=6).map(json.dumps),
    st.sampled_from(['"\\ud800"', "1", "null"]),
)


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


json_text = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(st.tuples(keys, inner), max_size=4).map(_object),
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
    ),
    max_leaves=8,
)


@st.composite
def revicom_events(draw: st.DrawFn) -> str:
    """A revicom status callback whose fields may be replaced by hazards or repeated."""
    fields = {
        '"message_uuid"': json.dumps(f"fuzz-{draw(st.integers(0, 10**9))}"),
        '"channel_type"': '"SMS"',
        '"callback_event"': '"delivered"',
        '"status"': '"delivered"',
        '"status_time"': '"2020-10-16T18:51:13Z"',
    }
    pairs = list(fields.items())
    for _ in range(draw(st.integers(0, 2))):
        index = draw(st.integers(0, len(pairs) - 1))
        pairs[index] = (pairs[index][0], draw(json_text))
    if draw(st.booleans()):
        pairs.append((draw(keys), draw(json_text)))  # sometimes a repeated key
    return _object(pairs)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["events", "json", "bytes", "truncated"]))
    if kind == "events":
        text = "[" + ",".join(draw(st.lists(revicom_events(), max_size=4))) + "]"
    elif kind == "json":
        text = draw(json_text)
    elif kind == "truncated":
        whole = "[" + ",".join(draw(st.lists(revicom_events(), min_size=1, max_size=3))) + "]"
        text = whole[: draw(st.integers(0, len(whole) - 1))]
    else:
        return draw(st.binary(max_size=64))
    return text.encode("utf-8", "surrogatepass")


# -- a strict reference parser ------------------------------------------------------------------


class NotStrict(ValueError):
    pass


def _refuse(_: str) -> Any:
    raise NotStrict


def _int(text: str) -> int:
    value = int(text)  # over 4300 digits: ValueError, not strict either
    if abs(value) > sys.float_info.max:
        raise NotStrict
    return value


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotStrict
    return value


def strict_reference(text: str) -> Any:
    """`text` parsed by the standard library with RFC 8259 / I-JSON rules, else NotStrict."""
    try:
        value = json.loads(text, parse_constant=_refuse, parse_int=_int, parse_float=_float)
    except (ValueError, RecursionError):
        raise NotStrict from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise NotStrict from None
    return value


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_the_parser_returns_strict_json_elements_or_a_body_error(body: bytes) -> None:
    try:
        elements = split_elements(body)
    except BodyError as e:
        assert e.status == 400
        try:
            reference = strict_reference(body.decode("utf-8").removeprefix("\ufeff"))
        except (NotStrict, UnicodeDecodeError):
            return
        # Only a top level that is not an array or an object is refused beyond the reference.
        assert not isinstance(reference, (list, dict)), (body, e)
        return
    for value, raw in elements:
        assert strict_reference(raw) == value
        raw.encode("utf-8")  # no lone surrogate can reach the store


# -- the real gateway -----------------------------------------------------------------------------

USER, PASSWORD = "fuzz", "fuzz-password"
CONFIG = f"""
server: {{host: 127.0.0.1, max_body_size: 64KiB}}
store: sqlite:///var/gateway.db
sources:
  quarantine:
    path: /callbacks/quarantine
    auth: {{basic: {{username: {USER}, password: {PASSWORD}}}, max_failures: 0}}
  reject:
    path: /callbacks/reject
    auth: {{basic: {{username: {USER}, password: {PASSWORD}}}, max_failures: 0}}
    on_invalid: reject
    max_events: 3
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(CONFIG, tmp_path_factory.mktemp("fuzz"))
    try:
        yield gw.start(120)
    finally:
        gw.kill()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def stored(gw: GatewayProcess) -> int:
    with closing(sqlite3.connect(gw.workdir / "var" / "gateway.db", timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    body=bodies(),
    path=st.sampled_from(["/callbacks/quarantine", "/callbacks/reject"]),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain"]
    ),
    credentials=st.sampled_from([(USER, PASSWORD), (USER, PASSWORD), (USER, "wrong")]),
)
def test_the_gateway_never_answers_5xx_and_stores_nothing_it_refuses(
    gateway: GatewayProcess,
    client: httpx.Client,
    body: bytes,
    path: str,
    content_type: str,
    credentials: tuple[str, str],
) -> None:
    before = stored(gateway)
    answer = client.post(
        gateway.url(path), content=body, headers={"Content-Type": content_type}, auth=credentials
    )
    assert answer.status_code < 500, (body, answer.text)
    assert answer.headers["content-type"].startswith("application/json")
    if answer.status_code == 200:
        counts = answer.json()
        assert stored(gateway) == before + counts["accepted"] + counts["quarantined"]
    else:
        assert stored(gateway) == before, (body, answer.status_code, answer.text)
