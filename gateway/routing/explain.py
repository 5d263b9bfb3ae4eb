"""``callback-gateway explain``: a dry run of the plugin chain, rendered for people.

For each element: whether the source format accepts it, what every ``filter_event`` /
``enrich_event`` hook did, every route (matched or not, and why), what each enricher added,
each filter's decision, and the exact payload each destination would receive. Nothing is sent
and nothing is written to the store: the ordering filter's marks live in memory for the run, so
explaining a batch shows which later elements the filter would suppress.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.clock import Clock, SystemClock
from gateway.config.redact import scrub
from gateway.destination.payload import envelope_text
from gateway.errors import PluginError, UsageError
from gateway.routing.chain import Chain, Decision, Step, Target

if TYPE_CHECKING:
    from gateway.config.loaded import Loaded

MARK = {True: "[matched]", False: "[skipped]"}


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def _headline(element: Any) -> str:
    if not isinstance(element, dict):
        return f"a {type(element).__name__}"
    parts = [
        f"{k}={element[k]}"
        for k in ("callback_event", "status", "message_uuid")
        if element.get(k) is not None
    ]
    return " ".join(parts) or "an object"


async def explain(
    loaded: Loaded,
    event_elements: list[tuple[Any, str]],
    source: str,
    *,
    clock: Clock | None = None,
) -> str:
    """Readable text explaining what the gateway would do with each ``(element, raw)``."""
    clock = clock or SystemClock()
    chain = Chain(loaded, None, clock)
    previews = Previews(loaded, clock)
    out: list[str] = []
    total = len(event_elements)
    out.append(
        f"source {source!r}: {total} element(s). Dry run: nothing is sent or stored;"
        " ids are placeholders; JSON payloads are shown indented."
    )
    for n, (element, raw) in enumerate(event_elements, 1):
        out.append("")
        out.append(f"=== element {n} of {total}: {_headline(element)} ===")
        problems = _format_problems(loaded, source, element)
        if problems:
            out.append("format: would be QUARANTINED (not routed): " + "; ".join(problems))
            continue
        meta = {"event_id": f"explain-{n}", "source": source, "received_at": clock.now()}
        try:
            decision = await chain.evaluate(element, meta, dry_run=True)
        except PluginError as e:
            out.append(f"HELD: {e}")
            out.append("  (the router would keep the event and try it again later)")
            continue
        out.extend(render_decision(chain, decision))
        out.extend(previews.render(decision.targets, element, raw, meta))
    return scrub("\n".join(out), loaded.secrets) + "\n"


async def explain_body(
    loaded: Loaded, body: bytes, source: str | None = None, *, clock: Clock | None = None
) -> str:
    """`explain` for a request body (a JSON array, or one object), as the CLI reads it from
    ``--sample`` or ``--file``. `source` defaults to the first configured source. Raises
    `UsageError` for a body that is not JSON or a source that is not configured."""
    from gateway.intake.body import BodyError, split_elements

    sources = list(loaded.config.sources)
    if source is None:
        source = sources[0] if sources else "explain"
    elif source not in loaded.config.sources:
        raise UsageError(
            f"--source: no source named {source!r} (configured: {', '.join(sources) or 'none'})"
        )
    try:
        elements = split_elements(body)
    except BodyError as e:
        raise UsageError(f"cannot explain this body: {e}") from None
    return await explain(loaded, elements, source, clock=clock)


def _format_problems(loaded: Loaded, source: str, element: Any) -> list[str]:
    cfg = loaded.config.sources.get(source)
    if cfg is None:
        return []
    fmt = loaded.registry.get("source_formats", cfg.format)
    try:
        instance = fmt(loaded.source_options.get(source))
        return list(instance.check(element))
    except Exception as e:
        return [f"format {cfg.format!r} raised {type(e).__name__}: {e}"]


def render_decision(chain: Chain, decision: Decision) -> list[str]:
    """The trace as indented lines, routes in configuration order."""
    out: list[str] = []
    hooks = [s for s in decision.trace if s.route is None]
    if hooks:
        out.append("plugin hooks:")
        for s in hooks:
            out.append(f"  {s.stage} {s.name}: {_hook_detail(s)}")
    by_route: dict[str, list[Step]] = {}
    for s in decision.trace:
        if s.route is not None:
            by_route.setdefault(s.route, []).append(s)
    if chain.routes:
        out.append("routes:")
    for route in chain.routes:
        steps = by_route.get(route.name)
        if not steps:
            if decision.state != "filtered" or by_route:
                out.append(f"  [not evaluated] {route.name}: an earlier route has stop: true")
            else:
                out.append(f"  [not evaluated] {route.name}: the event was dropped before routing")
            continue
        head = steps[0]
        out.append(f"  {MARK[head.ok]} {route.name}: {head.detail}")
        for s in steps[1:]:
            out.append("      " + _route_step(s))
    out.append("result: " + _result(decision))
    return out


def _hook_detail(s: Step) -> str:
    if s.stage == "enrich_event":
        return f"added {_compact(s.added)}" if s.added else "added nothing"
    return s.detail if s.ok else f"DROPPED the event ({s.detail})"


def _route_step(s: Step) -> str:
    if s.stage == "enrich":
        return f"enrich {s.name}: " + (f"added {_compact(s.added)}" if s.added else "added nothing")
    if s.stage == "filter":
        return f"filter {s.name}: " + ("kept" if s.ok else f"DROPPED: {s.detail}")
    if s.stage == "target":
        return f"-> {s.name}" if s.ok else f"-> {s.name}: SKIPPED ({s.detail}: not delivered)"
    if s.stage == "stop":
        return "stop: true: later routes are not evaluated"
    return f"{s.stage} {s.name}: {s.detail}"


def _result(decision: Decision) -> str:
    if decision.state == "routed":
        dests = ", ".join(f"{t.destination} (route {t.route})" for t in decision.targets)
        text = f"routed to {len(decision.targets)} destination(s): {dests}"
        if decision.reason:
            text += f"; suppressed on {decision.reason}"
        return text
    return f"{decision.state.upper()}: {decision.reason}"


class Previews:
    """The payload each destination would receive, from the destination plugin itself when it
    can say (a ``preview``, ``body`` or ``message`` method taking the delivery), else the
    envelope."""

    def __init__(self, loaded: Loaded, clock: Clock) -> None:
        self.loaded = loaded
        self.clock = clock
        self._instances: dict[str, Any] = {}

    def render(
        self, targets: list[Target], element: Any, raw: str, meta: dict[str, Any]
    ) -> list[str]:
        out: list[str] = []
        for k, t in enumerate(targets, 1):
            delivery = self._delivery(f"{meta['event_id']}.{k}", t, raw, meta)
            dest = self.loaded.config.destinations.get(t.destination)
            kind = dest.type if dest is not None else "?"
            payload, note = self._payload(t.destination, delivery)
            label = f"payload for {t.destination} ({kind}, route {t.route}"
            label += f", {note})" if note else ")"
            out.append(label + ":")
            out.extend("  " + line for line in _readable(payload).splitlines() or [""])
        return out

    def payload_of(self, delivery: Any) -> tuple[str, str]:
        """(the payload of a stored `delivery` as its destination renders it today, indented
        for reading; a note such as ``payload: envelope``), with secrets scrubbed."""
        payload, note = self._payload(delivery.destination, delivery)
        return scrub(_readable(payload), self.loaded.secrets), note

    def _delivery(self, ident: str, t: Target, raw: str, meta: dict[str, Any]) -> Any:
        from gateway.store.base import DeliveryRecord

        now = self.clock.now()
        return DeliveryRecord(
            id=ident,
            event_id=meta["event_id"],
            source=meta["source"],
            route=t.route,
            destination=t.destination,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            enrichment=dict(t.enrichment),
            raw=raw,
            received_at=meta["received_at"],
        )

    def _instance(self, name: str) -> Any:
        if name not in self._instances:
            self._instances[name] = None
            dest = self.loaded.config.destinations.get(name)
            options = self.loaded.destination_options.get(name)
            if dest is not None and options is not None:
                try:
                    from gateway.destination.base import Services

                    cls = self.loaded.registry.get("destinations", dest.type)
                    services = Services(
                        http=None,  # type: ignore[arg-type]  # a preview sends nothing
                        clock=self.clock,
                        marks=None,
                        secrets=self.loaded.secrets,
                    )
                    self._instances[name] = cls(name, options, services)
                except Exception:
                    self._instances[name] = None
        return self._instances[name]

    def _payload(self, name: str, delivery: Any) -> tuple[str, str]:
        instance = self._instance(name)
        options = self.loaded.destination_options.get(name)
        for method in ("preview", "body", "message"):
            fn = getattr(instance, method, None)
            if callable(fn):
                try:
                    value = fn(delivery)
                except Exception as e:
                    return f"(cannot render: {e})", "the delivery would be dead"
                return _as_text(value), _payload_note(options)
        return envelope_text(delivery), "envelope"


def _readable(payload: str) -> str:
    """A JSON payload indented token by token: every key, number and string exactly as it
    will be sent (``1.50`` stays ``1.50``); only whitespace between tokens differs."""
    try:
        json.loads(payload)
    except ValueError:
        return payload
    out: list[str] = []
    depth, i, n = 0, 0, len(payload)
    while i < n:
        c = payload[i]
        if c == '"':
            j = i + 1
            while payload[j] != '"':
                j += 2 if payload[j] == "\\" else 1
            out.append(payload[i : j + 1])
            i = j + 1
            continue
        if c in " \t\r\n":
            i += 1
            continue
        if c in "{[":
            k = i + 1
            while k < n and payload[k] in " \t\r\n":
                k += 1
            if k < n and payload[k] in "}]":  # empty: keep {} / [] together
                out.append(c + payload[k])
                i = k + 1
                continue
            depth += 1
            out.append(c + "\n" + "  " * depth)
        elif c in "}]":
            depth -= 1
            out.append("\n" + "  " * depth + c)
        elif c == ",":
            out.append(",\n" + "  " * depth)
        elif c == ":":
            out.append(": ")
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _payload_note(options: Any) -> str:
    mode = getattr(options, "payload", None)
    return f"payload: {mode}" if isinstance(mode, str) else ""


def _as_text(value: Any) -> str:
    if hasattr(value, "as_string"):  # an email.message.Message
        return str(value.as_string())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)
