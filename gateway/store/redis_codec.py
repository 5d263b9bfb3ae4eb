"""Encoding for the Redis store: how values travel to the Lua scripts and come back as
records, the store URL, and the server's persistence settings (`Persistence`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import DataError

from gateway.store.base import (
    AttemptRecord,
    DeliveryRecord,
    EventRecord,
    IncomingEvent,
    Lease,
    NewDelivery,
)

DEFAULT_PREFIX = "callback-gateway:"

_C = TypeVar("_C")

try:
    from hiredis import pack_command as _hiredis_pack

    _HAVE_HIREDIS = True
except ImportError:  # hiredis is a dependency, but the store works without it
    _HAVE_HIREDIS = False


@dataclass(frozen=True)
class Persistence:
    """The server's persistence settings as read at `open` (None: could not be read)."""

    appendonly: str | None = None
    appendfsync: str | None = None
    save: str | None = None
    error: str | None = None

    @property
    def risk(self) -> str | None:
        """How acknowledged events could be lost, or None when every write is fsynced."""
        if self.error is not None or self.appendonly is None:
            return (
                f"could not read the Redis persistence settings ({self.error}); make sure"
                " the server runs with appendonly yes and appendfsync always"
            )
        if self.appendonly == "yes":
            if self.appendfsync == "always":
                return None
            if self.appendfsync == "everysec":
                return (
                    "appendfsync everysec: up to about 1s of acknowledged events is lost if"
                    " the Redis host crashes or loses power; use appendfsync always"
                )
            return (
                f"appendfsync {self.appendfsync}: the OS decides when the AOF reaches disk;"
                " recent acknowledged events are lost if the Redis host crashes"
            )
        if self.save:
            return (
                f"no AOF, RDB snapshots only (save {self.save!r}): events acknowledged since"
                " the last snapshot are lost if Redis crashes; use appendonly yes"
            )
        return (
            "no persistence (appendonly no, save ''): every stored event and delivery is"
            " lost when Redis restarts; use appendonly yes with appendfsync always"
        )


def opt(value: Any) -> str:
    return "" if value is None else f"={value}"


def num(value: float) -> str:
    return repr(float(value))  # exact round trip, unlike Lua's 14-digit tostring


def ingest_args(
    source: str, items: list[IncomingEvent], ids: list[str], now: float, lease: Lease | None
) -> list[Any]:
    """One call's arguments for the INGEST script."""
    owner, until = (lease.owner, num(lease.until)) if lease else ("", "")
    args: list[Any] = [source, num(now), owner, until, len(items)]
    for event_id, it in zip(ids, items, strict=True):
        if it.problems:
            args += [
                it.dedupe_key,
                event_id,
                it.raw,
                "quarantined",
                opt(it.message_uuid),
                opt(it.event),
                "=" + "; ".join(it.problems),
            ]
        else:
            args += [
                it.dedupe_key,
                event_id,
                it.raw,
                "received",
                opt(it.message_uuid),
                opt(it.event),
                "",
            ]
    return args


def finish_event_args(
    event_id: str, state: str, deliveries: list[NewDelivery], now: float, reason: str | None
) -> list[Any]:
    """One call's arguments for the FINISH_EVENT script."""
    args: list[Any] = [event_id, state, num(now), opt(reason), len(deliveries)]
    for d in deliveries:
        args += [
            d.id,
            d.route,
            d.destination,
            num(d.next_attempt_at),
            json.dumps(d.enrichment, separators=(",", ":")),
        ]
    return args


def attempt_args(
    delivery_id: str,
    attempt: AttemptRecord,
    state: str,
    next_attempt_at: float | None,
    counts: bool,
    now: float,
) -> list[Any]:
    """One call's arguments for the FINISH_ATTEMPT script."""
    text = json.dumps(
        {
            "started_at": attempt.started_at,
            "finished_at": attempt.finished_at,
            "outcome": attempt.outcome,
            "status": attempt.status,
            "error": attempt.error,
            "details": attempt.details or None,
        }
    )
    due = None if next_attempt_at is None else num(next_attempt_at)
    return [
        delivery_id,
        text,
        state,
        opt(due),
        1 if counts else 0,
        num(now),
        num(attempt.started_at),
        opt(attempt.error),
        opt(attempt.status),
    ]


def pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def opt_float(value: str | None) -> float | None:
    return None if value is None else float(value)


def event_record(h: dict[str, str]) -> EventRecord:
    return EventRecord(
        id=h["id"],
        source=h["source"],
        received_at=float(h["received_at"]),
        raw=h["raw"],
        state=h["state"],
        message_uuid=h.get("message_uuid"),
        event=h.get("event"),
        reason=h.get("reason"),
        route_attempts=int(h.get("route_attempts", 0)),
        next_route_at=float(h.get("next_route_at", 0)),
        recheck=h.get("recheck") == "1",
    )


def delivery_record(h: dict[str, str]) -> DeliveryRecord:
    status = h.get("last_status")
    return DeliveryRecord(
        id=h["id"],
        event_id=h["event_id"],
        source=h["source"],
        route=h["route"],
        destination=h["destination"],
        state=h["state"],
        attempts=int(h["attempts"]),
        next_attempt_at=float(h["next_attempt_at"]),
        created_at=float(h["created_at"]),
        updated_at=float(h["updated_at"]),
        first_attempt_at=opt_float(h.get("first_attempt_at")),
        last_error=h.get("last_error"),
        last_status=None if status is None else int(status),
        message_uuid=h.get("message_uuid"),
        enrichment=json.loads(h.get("enrichment") or "{}"),
        raw=h.get("raw", ""),
        received_at=float(h.get("received_at", 0)),
        lease_until=opt_float(h.get("lease_until")),
    )


def attempt_record(number: int, text: str) -> AttemptRecord:
    a = json.loads(text)
    return AttemptRecord(
        a["started_at"],
        a["finished_at"],
        a["outcome"],
        a["status"],
        a["error"],
        number,
        a.get("details") or {},
    )


def split_url(url: str) -> tuple[str, str]:
    """(URL for redis-py, key prefix): the ``prefix`` query parameter is ours."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


class _CPacked:
    """Packs commands with hiredis's C packer. redis-py's asyncio connections pack every
    argument in Python (its sync client uses hiredis), which py-spy showed at ~7% of a loaded
    gateway: a grouped ingest script call carries hundreds of arguments (~0.8 ms in Python,
    ~0.1 ms in C for 32 calls)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # 'CONFIG GET' is two words on the wire
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        plain = tuple(
            a
            if isinstance(a, (str, bytes, int)) and not isinstance(a, bool)
            else repr(a)
            if isinstance(a, float)
            else bytes(a)
            if isinstance(a, (bytearray, memoryview))
            else _refuse(a)
            for a in args
        )
        # hiredis's stub types the argument as a 1-tuple; pack_command takes any length.
        return [_hiredis_pack(plain)]  # type: ignore[arg-type]


def _refuse(value: Any) -> bytes:
    raise DataError(f"Invalid input of type: {type(value).__name__!r}")


_PACKED: dict[type, type] = {}


def c_packed(connection_class: type[_C]) -> type[_C]:
    """`connection_class` packing with hiredis when it is installed (else unchanged)."""
    if not _HAVE_HIREDIS:
        return connection_class
    packed = _PACKED.get(connection_class)
    if packed is None:  # one subclass per connection class, created on first use
        packed = type(f"CPacked{connection_class.__name__}", (_CPacked, connection_class), {})
        _PACKED[connection_class] = packed
    return cast("type[_C]", packed)
