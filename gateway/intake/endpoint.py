"""The request path of one source: check, parse, validate, dedupe, commit, answer.

No plugin work and no outbound I/O happen here; the only wait is the group commit. A 2xx is
sent only after every element of the body is durably stored (or recognised as a duplicate).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from sanic import Request, response
from sanic.response import HTTPResponse

from gateway.clock import Clock
from gateway.config.models import Network, SourceConfig
from gateway.errors import StoreError
from gateway.intake.auth import BasicAuth, address_allowed, client_address
from gateway.intake.body import BodyError, Elements, duplicate_problems, split_elements
from gateway.intake.responses import error
from gateway.intake.throttle import FailureThrottle
from gateway.ops import logs
from gateway.ops.metrics import Metrics
from gateway.plugin.components import SourceFormat
from gateway.store import EventRecord, IncomingEvent, IngestResult, Lease, Store

log = logging.getLogger("gateway.intake.endpoint")
#: Distinct event names per source counted under their own metric label (see `_event_label`).
MAX_EVENT_LABELS = 64


#: Commits in progress, held here so that one whose request was cancelled is not collected.
_commits: set[asyncio.Future[Any]] = set()


def raw_key(raw: str) -> str:
    """Dedupe key for an element its format cannot key (it is invalid): its exact text."""
    import hashlib

    return "raw:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()


class Handoff(Protocol):
    """Where committed events go next (the process's router; see `gateway.server.app`)."""

    def intake_lease(self) -> Lease | None:
        """The lease to commit fresh events with, or None to commit them unleased."""

    def committed(
        self,
        source: str,
        result: IngestResult,
        fresh: list[tuple[EventRecord, Any]],
        lease: Lease | None,
    ) -> None:
        """After the commit: `fresh` are the accepted events with their parsed elements."""


class SourceEndpoint:
    """Handles POSTs to one configured source path."""

    def __init__(
        self,
        name: str,
        config: SourceConfig,
        fmt: SourceFormat,
        store: Callable[[], Store],
        clock: Clock,
        trusted_proxies: list[Network],
        handoff: Handoff | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.format = fmt
        self._store = store
        self.clock = clock
        self.trusted = trusted_proxies
        self.handoff = handoff
        self.metrics = metrics
        basic = config.auth.basic
        self.auth = BasicAuth(basic.username, basic.password) if basic else None
        self.throttle = FailureThrottle(config.auth.max_failures, config.auth.failure_window)
        self.challenge = {"WWW-Authenticate": f'Basic realm="{config.auth.realm}", charset="UTF-8"'}
        # The JSON of a 200 answer is built once per (accepted, duplicates, quarantined).
        self._ok_bodies: dict[tuple[int, int, int], bytes] = {}
        self._event_labels: set[str] = set()

    async def handle(self, request: Request) -> HTTPResponse:
        started = time.perf_counter()
        try:
            answer = await self._handle(request)
        except Exception:  # a bug (ours or a plugin's): answered, counted and logged once
            log.exception("source=%s status=500 error=internal_error", self.name)
            answer = error(500, "internal_error", "internal error; nothing was acknowledged")
        if self.metrics is not None:
            self.metrics.count("requests", (self.name, str(answer.status)))
            if answer.status == 200:
                self.metrics.observe("ack_seconds", (self.name,), time.perf_counter() - started)
        return answer

    def refused(self, request: Request, status: int, code: str) -> None:
        """A request to this source that the server answered before `handle` ran (413 for a
        body over ``max_body_size``, 408 for a body that did not arrive in time): counted and
        logged like every other answer."""
        if self.metrics is not None:
            self.metrics.count("requests", (self.name, str(status)))
        log.warning("source=%s status=%d error=%s client=%s", self.name, status, code, request.ip)

    async def _handle(self, request: Request) -> HTTPResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            elements = split_elements(request.body, self.config.max_events)
        except BodyError as e:
            return self._answer(e.status, e.code, str(e))
        items, invalid = self._check(elements, request.headers)
        if invalid and self.config.on_invalid == "reject":
            self._count(items, ["rejected"] * len(items))
            return self._answer(422, "invalid", invalid)
        if not items:
            return self._ok(0, 0, 0)
        try:
            result = await self._commit(items, [v for v, _ in elements])
        except StoreError as e:
            log.error("source=%s status=503 store cannot commit: %s", self.name, e)
            return error(
                503, "store_unavailable", "the callback was not stored; send it again later"
            )
        self._count(items, result.outcomes)
        return self._ok(result.accepted, result.duplicates, result.quarantined)

    async def _commit(self, items: list[IncomingEvent], values: list[Any]) -> IngestResult:
        """Commit `items`, then hand the accepted ones to the router (see `Handoff`).

        Shielded: a client that hangs up mid-commit cancels this request, but the commit goes
        on in the store, and its events must still reach the router (leased to this process,
        nobody else would route them before the lease ran out). So the hand-off is the
        commit's own callback (`_committed`), and the request only waits on `waiter`: no task
        per request, where `asyncio.shield` would add one more and two callbacks."""
        lease = self.handoff.intake_lease() if self.handoff is not None else None
        now = self.clock.now()
        started = time.perf_counter()
        commit = self._store().start_ingest(self.name, items, now, lease)
        waiter: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        _commits.add(commit)
        commit.add_done_callback(
            functools.partial(self._committed, waiter, items, values, now, lease, started)
        )
        return await waiter

    def _committed(
        self,
        waiter: asyncio.Future[IngestResult],
        items: list[IncomingEvent],
        values: list[Any],
        now: float,
        lease: Lease | None,
        started: float,
        commit: asyncio.Future[IngestResult],
    ) -> None:
        """The commit ended: hand its events over, then release the request waiting on
        `waiter` with the result or the error (or log the error, if the request is gone)."""
        _commits.discard(commit)
        if commit.cancelled():  # the loop is shutting down
            waiter.cancel()
            return
        try:
            result = commit.result()
            if self.metrics is not None:
                self.metrics.observe("commit_seconds", (), time.perf_counter() - started)
            if self.handoff is not None:
                fresh = self._fresh(items, values, result, now) if lease else []
                self.handoff.committed(self.name, result, fresh, lease)
        except Exception as e:  # the store's error, or a bug in the hand-off
            if not waiter.done():
                waiter.set_exception(e)
            else:  # nobody else will report it
                log.error("commit of a cancelled request failed: %s: %s", type(e).__name__, e)
            return
        if not waiter.done():
            waiter.set_result(result)

    def _fresh(
        self, items: list[IncomingEvent], values: list[Any], result: IngestResult, now: float
    ) -> list[tuple[EventRecord, Any]]:
        """The accepted events as the router sees them, each with its parsed element."""
        fresh = []
        ids = iter(result.event_ids)  # stored items (accepted and quarantined), in body order
        for item, value, outcome in zip(items, values, result.outcomes, strict=True):
            if outcome == "duplicate":
                continue
            event_id = next(ids)
            if outcome == "accepted":
                record = EventRecord(
                    event_id, self.name, now, item.raw, "received", item.message_uuid, item.event
                )
                fresh.append((record, value))
        return fresh

    def _count(self, items: list[IncomingEvent], outcomes: Iterable[str]) -> None:
        if self.metrics is None:
            return
        for item, outcome in zip(items, outcomes, strict=False):
            self.metrics.count("callbacks", (self.name, self._event_label(item.event), outcome))

    def _event_label(self, event: str | None) -> str:
        """The event name as a metric label. The name comes from the poster's data, so after
        `MAX_EVENT_LABELS` distinct names the rest count as ``other``: a buggy or hostile poster
        cannot grow the metrics without bound."""
        if event is None:
            return "unknown"
        if event in self._event_labels:
            return event
        if len(self._event_labels) < MAX_EVENT_LABELS:
            self._event_labels.add(event)
            return event
        return "other"

    def _refuse(self, request: Request) -> HTTPResponse | None:
        allow = self.config.auth.allow_ips
        addr = self._client(request) if allow is not None or self.auth is not None else ""
        if allow is not None and not address_allowed(addr, allow):
            return self._answer(403, "forbidden", f"address {addr} is not allowed", addr=addr)
        if self.auth is not None:
            refused = self._authenticate(request, addr)
            if refused is not None:
                return refused
        ctype = request.headers.get("content-type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            shown = ctype or "none"
            return self._answer(
                415,
                "unsupported_media_type",
                f"Content-Type must be application/json (got {shown})",
            )
        return None

    def _authenticate(self, request: Request, addr: str) -> HTTPResponse | None:
        """401 for missing or wrong credentials; 429 while `addr` has sent wrong ones too often
        (not logged per request: one line when the address reaches the limit)."""
        assert self.auth is not None
        now = self.clock.now()
        wait = self.throttle.retry_after(addr, now)
        if wait is not None:
            seconds = str(max(1, math.ceil(wait)))
            return error(
                429,
                "too_many_failures",
                f"too many failed authentications from {addr}; try again in {seconds}s",
                {"Retry-After": seconds},
            )
        header = request.headers.get("authorization")
        if self.auth.check(header):
            self.throttle.succeeded(addr)
            return None
        # Only wrong credentials count: a client that sends them after the challenge is not
        # guessing.
        if header is not None and self.throttle.failed(addr, now):
            log.warning(
                "source=%s client=%s failed authentication %d times; answering 429 for %gs",
                self.name,
                addr,
                self.throttle.max_failures,
                self.throttle.window,
            )
        return self._answer(
            401, "unauthorized", "valid Basic credentials are required", self.challenge, addr
        )

    def _client(self, request: Request) -> str:
        """The client's address: the peer, or behind a trusted proxy the right-most untrusted
        hop of every ``X-Forwarded-For`` line, combined in order (RFC 9110 section 5.3)."""
        if not self.trusted:
            return str(request.ip)
        lines = request.headers.getall("x-forwarded-for", [])
        return client_address(request.ip, ", ".join(lines) or None, self.trusted)

    def _check(
        self, elements: Elements, headers: Any
    ) -> tuple[list[IncomingEvent], list[dict[str, Any]]]:
        items: list[IncomingEvent] = []
        invalid: list[dict[str, Any]] = []
        repeated = elements.duplicates
        for index, (value, raw) in enumerate(elements):
            problems = self.format.check(value)
            if index in repeated:
                problems = [*duplicate_problems(repeated[index]), *problems]
            uuid, event = self.format.describe(value)
            if problems:
                invalid.append({"index": index, "problems": problems})
                items.append(IncomingEvent(raw, raw_key(raw), uuid, event, tuple(problems)))
            else:
                key = self.format.dedupe_key(value, raw, headers, index)
                items.append(IncomingEvent(raw, key, uuid, event))
        return items, invalid

    def _ok(self, accepted: int, duplicates: int, quarantined: int) -> HTTPResponse:
        logs.line(
            log,
            logging.INFO,
            "source=%s status=200 accepted=%d duplicates=%d quarantined=%d",
            self.name,
            accepted,
            duplicates,
            quarantined,
        )
        key = (accepted, duplicates, quarantined)
        body = self._ok_bodies.get(key)
        if body is None:
            body = (
                response.json(
                    {"accepted": accepted, "duplicates": duplicates, "quarantined": quarantined}
                ).body
                or b""
            )
            if len(self._ok_bodies) < 256:  # bodies of up to a few elements: a handful of keys
                self._ok_bodies[key] = body
        return HTTPResponse(body, content_type="application/json")

    def _answer(
        self,
        status: int,
        code: str,
        detail: Any,
        headers: dict[str, str] | None = None,
        addr: str | None = None,
    ) -> HTTPResponse:
        if addr is None:
            log.warning("source=%s status=%d error=%s", self.name, status, code)
        else:
            log.warning("source=%s status=%d error=%s client=%s", self.name, status, code, addr)
        return error(status, code, detail, headers)
