"""Built-in enrichers: ``status_text``, ``error_text``, ``fields``, ``latency``.

Use one by name in a route (``enrich: [status_text]``), or configure a named instance under
``enrichers:`` (``error_text: {codes: {6969: "Blocked by operator"}}``; ``type`` defaults to the
instance name). Each returns a small dict merged into the event's enrichment.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from gateway import hookimpl


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: What each provider status means, in words an on-call person can act on.
STATUS_TEXTS = {
    "sent": "Sent to the operator, not yet delivered",
    "delivered": "Delivered to the recipient",
    "undelivered": "Not delivered within the message lifetime",
    "unsent": "Could not be sent",
    "read": "Read by the recipient",
    "unread": "Not read by the recipient",
    "inbound_sent": "Inbound message from the recipient",
}


class StatusText:
    """``status_text``: human text for ``status``. `texts` overrides or adds statuses."""

    class Options(_Options):
        field: str = "status_text"
        texts: dict[str, str] = {}

    def __init__(self, options: Options) -> None:
        self.field = options.field
        self.texts = {**STATUS_TEXTS, **options.texts}

    def enrich(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
        text = self.texts.get(event.get("status"))  # type: ignore[arg-type]
        return {self.field: text} if text else None


def read_code_table(path: Path) -> dict[int, str]:
    """A YAML mapping ``code: text``, or a CSV of ``code,text`` rows (a header row is skipped)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        table = {}
        for n, row in enumerate(csv.reader(text.splitlines())):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            try:
                code = int(row[0])
            except ValueError:
                if n == 0:
                    continue  # header
                raise ValueError(
                    f"{path}: row {n + 1}: {row[0]!r} is not an integer code"
                ) from None
            table[code] = ",".join(row[1:]).strip()
        return table
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of code: text")
    try:
        return {int(k): str(v) for k, v in data.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: every key must be an integer error code") from None


class ErrorText:
    """``error_text``: the meaning of ``error_code`` from a table you provide (the provider's
    codes are not public). `codes` inline, and/or `file` (``.yaml``/``.yml`` or ``.csv``; a
    relative path is relative to the working directory); inline codes win. An unknown code gets
    `default` (``{code}`` is replaced), or nothing when `default` is not set."""

    class Options(_Options):
        field: str = "error_text"
        codes: dict[int, str] = {}
        file: Path | None = None
        default: str | None = None

        @model_validator(mode="after")
        def _load_file(self) -> ErrorText.Options:
            if self.file is not None:
                try:
                    table = read_code_table(self.file)
                except OSError as e:
                    raise ValueError(
                        f"file: cannot read {str(self.file)!r}: {e.strerror}"
                    ) from None
                self.codes = {**table, **self.codes}
            return self

    def __init__(self, options: Options) -> None:
        self.options = options

    def enrich(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
        code = event.get("error_code")
        if code is None or isinstance(code, bool):
            return None
        try:
            text = self.options.codes.get(int(code))
        except (TypeError, ValueError):
            text = None
        if text is None and self.options.default is not None:
            text = self.options.default.replace("{code}", str(code))
        return {self.options.field: text} if text is not None else None


class Fields:
    """``fields``: static fields, for example ``{team: payments, environment: prod}``."""

    class Options(_Options):
        values: dict[str, Any] = {}

    def __init__(self, options: Options) -> None:
        self.values = options.values

    def enrich(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
        return dict(self.values) or None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (``2020-10-16T18:51:13Z``) as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # the contract's times are UTC


class Latency:
    """``latency``: seconds from the provider's ``status_time`` / ``price_time`` /
    ``click_time`` to the moment the gateway received the callback (``meta.received_at``).
    Times without a zone are taken as UTC (the contract's times are UTC)."""

    class Options(_Options):
        field: str = "latency_seconds"

    TIME_FIELDS = ("status_time", "price_time", "click_time")

    def __init__(self, options: Options) -> None:
        self.field = options.field

    def enrich(self, event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any] | None:
        received = meta.get("received_at")
        if not isinstance(received, int | float):
            return None
        for name in self.TIME_FIELDS:
            t = parse_time(event.get(name))
            if t is not None:
                return {self.field: round(received - t.timestamp(), 3)}
        return None


@hookimpl
def register_enrichers(register: Any) -> None:
    register("status_text", StatusText)
    register("error_text", ErrorText)
    register("fields", Fields)
    register("latency", Latency)
