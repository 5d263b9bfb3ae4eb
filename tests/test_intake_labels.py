"""The event names used as metric labels are bounded per source."""

from __future__ import annotations

from gateway_plugins.revicom import RevicomFormat

from gateway.clock import SystemClock
from gateway.config.models import SourceConfig
from gateway.intake.endpoint import MAX_EVENT_LABELS, SourceEndpoint


def endpoint() -> SourceEndpoint:
    return SourceEndpoint(
        "revicom",
        SourceConfig(path="/cb"),
        RevicomFormat(),
        lambda: None,  # type: ignore[arg-type,return-value]
        SystemClock(),
        [],
    )


def test_names_past_the_cap_count_as_other_and_known_ones_keep_theirs() -> None:
    ep = endpoint()
    names = [f"event-{i}" for i in range(MAX_EVENT_LABELS)]
    assert [ep._event_label(n) for n in names] == names
    assert ep._event_label("one-too-many") == "other"
    assert ep._event_label("event-0") == "event-0"
    assert ep._event_label(None) == "unknown"
