"""JSON error answers: ``{"error": code, "detail": text}`` with the right status."""

from __future__ import annotations

from typing import Any

from sanic import response
from sanic.response import HTTPResponse


def error(
    status: int, code: str, detail: Any, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return response.json({"error": code, "detail": detail}, status=status, headers=headers)


#: Sanic's own exceptions mapped to our codes (raised before our handlers run).
SANIC_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    431: "header_too_large",
    500: "internal_error",
    503: "unavailable",
}
