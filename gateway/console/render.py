"""Rendering: one Jinja2 environment over the package's templates, and the filters the pages
use for times, ages and durations. Autoescaping is on for every template."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import jinja2
from sanic import Request
from sanic.request.parameters import RequestParameters
from sanic.response import HTTPResponse, html

from gateway.runtime import Gateway


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.console", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ts"] = fmt_time
    env.filters["ago"] = fmt_age
    env.filters["ms"] = fmt_duration
    env.filters["datetime_local"] = datetime_local
    return env


def fmt_time(ts: float | None) -> str:
    """``2026-12-04 20:43:50Z`` (UTC, to the second), or a dash."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_age(seconds: float | None) -> str:
    """A short age: ``42s``, ``7m``, ``3h 5m``, ``2d 4h``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def datetime_local(ts: float | None) -> str:
    """The value of an ``<input type="datetime-local">`` (UTC), or empty."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M")


def parse_datetime_local(text: str | None) -> float | None:
    """A ``datetime-local`` value (read as UTC) as epoch seconds; None when empty. Raises
    `ValueError` for anything else."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def gateway_of(request: Request) -> Gateway:
    """The serving process's `Gateway` (config, clock, store, running parts)."""
    gw: Gateway = request.app.ctx.gateway
    return gw


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTTPResponse:
    """Render `template` with what every page needs (the session's CSRF token, the search
    box's value, the current section, a notice from the last action)."""
    session = getattr(request.ctx, "console_session", None)
    token = gateway_of(request).config.admin.token
    base = {
        "csrf": session.csrf(token) if session is not None and token else "",
        "logged_in": session is not None,
        "q": request.args.get("q", ""),
        "notice": request.args.get("notice", ""),
        "section": "",
        "now": gateway_of(request).clock.now(),
    }
    body = environment().get_template(template).render({**base, **context})
    return html(
        body,
        status=status,
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": (
                "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
            ),
            "Referrer-Policy": "same-origin",
        },
    )


def redirect_with_notice(back: str | None, default: str, notice: str) -> HTTPResponse:
    """303 to `back` (a console path, else `default`) carrying `notice` for the next page."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    from sanic import response

    target = back if back and back.startswith("/console/") and "//" not in back else default
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "notice"] + [("notice", notice)]
    return response.redirect(f"{parts.path}?{urlencode(query)}", status=303)


def form_of(request: Request) -> RequestParameters:
    """The posted form fields (empty for a request without a form body)."""
    return request.form if request.form is not None else RequestParameters()
