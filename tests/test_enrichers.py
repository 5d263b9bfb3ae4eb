"""The built-in enrichers: status_text, error_text, fields, latency."""

from __future__ import annotations

from datetime import datetime

import pytest
from gateway_plugins.enrichers import STATUS_TEXTS, ErrorText, Fields, Latency, StatusText
from pydantic import ValidationError

from gateway.config import load_config_text
from gateway.errors import ConfigError

RECEIVED = datetime.fromisoformat("2020-10-16T18:51:20Z").timestamp()
META = {"event_id": "e", "source": "s", "received_at": RECEIVED}


def make(cls, **options):
    return cls(cls.Options.model_validate(options))


@pytest.mark.parametrize(
    "status", ["delivered", "undelivered", "unsent", "sent", "read", "unread", "inbound_sent"]
)
def test_status_text_describes_every_status(status):
    added = make(StatusText).enrich({"status": status}, META)
    assert added == {"status_text": STATUS_TEXTS[status]}
    assert added["status_text"]


def test_status_text_can_be_reworded_and_renamed():
    e = make(StatusText, texts={"unsent": "Rejected"}, field="summary")
    assert e.enrich({"status": "unsent"}, META) == {"summary": "Rejected"}
    assert e.enrich({"status": "sent"}, META) == {"summary": STATUS_TEXTS["sent"]}


def test_status_text_adds_nothing_without_a_known_status():
    assert make(StatusText).enrich({"callback_event": "price"}, META) is None
    assert make(StatusText).enrich({"status": "weird"}, META) is None


def test_error_text_maps_codes_from_options():
    e = make(ErrorText, codes={6969: "Blocked by operator", "7060": "Invalid number"})
    assert e.enrich({"error_code": 6969}, META) == {"error_text": "Blocked by operator"}
    assert e.enrich({"error_code": 7060}, META) == {"error_text": "Invalid number"}
    assert e.enrich({"error_code": 1}, META) is None
    assert e.enrich({"status": "delivered"}, META) is None


def test_error_text_default_for_unknown_codes():
    e = make(ErrorText, codes={6969: "Blocked"}, default="Unknown error {code}")
    assert e.enrich({"error_code": 42}, META) == {"error_text": "Unknown error 42"}
    assert e.enrich({"error_code": None}, META) is None


def test_error_text_reads_a_yaml_table(tmp_path):
    path = tmp_path / "codes.yaml"
    path.write_text("6969: Blocked by operator\n7060: Invalid number\n")
    e = make(ErrorText, file=str(path), codes={7060: "Overridden inline"})
    assert e.enrich({"error_code": 6969}, META) == {"error_text": "Blocked by operator"}
    assert e.enrich({"error_code": 7060}, META) == {"error_text": "Overridden inline"}


def test_error_text_reads_a_csv_table_with_or_without_a_header(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text('code,text\n6969,"Blocked, by operator"\n7060,Invalid number\n')
    e = make(ErrorText, file=str(path))
    assert e.enrich({"error_code": 6969}, META) == {"error_text": "Blocked, by operator"}
    path.write_text("6969,Blocked\n")
    assert make(ErrorText, file=str(path)).enrich({"error_code": 6969}, META)


def test_error_text_problems_with_the_file_are_configuration_errors(tmp_path):
    with pytest.raises(ValidationError, match="cannot read"):
        make(ErrorText, file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocked: 6969\n")
    with pytest.raises(ValidationError, match="integer error code"):
        make(ErrorText, file=str(bad))
    with pytest.raises(ConfigError) as e:
        load_config_text(
            f"""
            destinations: {{a: {{type: file, path: a.jsonl}}}}
            enrichers: {{error_text: {{file: {tmp_path / "missing.csv"}}}}}
            routes: [{{enrich: error_text, to: a}}]
            """,
            env={},
        )
    assert any(
        p.startswith("enrichers.error_text") and "cannot read" in p for p in e.value.problems
    ), e.value.problems


def test_fields_adds_static_values():
    e = make(Fields, values={"team": "payments", "environment": "prod", "tier": 1})
    assert e.enrich({}, META) == {"team": "payments", "environment": "prod", "tier": 1}
    assert make(Fields).enrich({}, META) is None


@pytest.mark.parametrize(
    ("event", "seconds"),
    [
        ({"status_time": "2020-10-16T18:51:13Z"}, 7.0),
        ({"price_time": "2020-10-16T18:51:00Z"}, 20.0),
        ({"click_time": "2020-10-16T21:51:10+03:00"}, 10.0),
        ({"status_time": "2020-10-16T18:51:19.5"}, 0.5),  # no zone: UTC, as the contract says
    ],
)
def test_latency_is_seconds_from_the_provider_time_to_receipt(event, seconds):
    assert make(Latency).enrich(event, META) == {"latency_seconds": seconds}


def test_latency_adds_nothing_without_a_usable_time():
    assert make(Latency).enrich({"status_time": "yesterday"}, META) is None
    assert make(Latency).enrich({}, META) is None
    assert make(Latency).enrich({"status_time": "2020-10-16T18:51:13Z"}, {}) is None


def test_enricher_options_are_validated_strictly():
    with pytest.raises(ValidationError):
        make(Fields, value={"x": 1})
    with pytest.raises(ValidationError):
        make(ErrorText, codes={"abc": "x"})
