"""What an admin request may hold: pydantic models for the bodies and queries of ``/admin``.

The admin HTTP API (`gateway.server.admin_api`) and the web console validate what a client sent
with these models before calling `gateway.delivery.admin`, so both refuse the same things the
same way and a refused request changes nothing. Bodies are validated strictly (JSON types as
sent: ``"false"`` is not a boolean, ``1`` is not an id); query strings, which are all text, are
converted (``limit=50``).

    request = parse(ReplayRequest, body)      # RequestInvalid with .problems when refused

`RequestInvalid.problems` are lines ``field.path: message`` (``ids[2]: Input should be a valid
string``), the same shape ``check`` uses for configuration problems; the HTTP API answers them
as ``400 {"error": "bad_request", "detail": [...]}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from gateway.config.paths import format_loc
from gateway.errors import UsageError

#: Most ids in one replay request.
MAX_IDS = 1000
#: Longest id accepted (gateway ids are about 30 characters).
MAX_ID_LENGTH = 100
#: Longest destination name or message uuid accepted in a filter.
MAX_NAME_LENGTH = 200
#: Longest pause reason.
MAX_REASON_LENGTH = 500
#: Largest ``limit`` of a listing.
MAX_LIMIT = 100_000

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]
State = Literal["pending", "in_flight", "delivered", "dead"]
#: Epoch seconds; NaN and infinities are refused.
Since = Annotated[float, Field(ge=0, allow_inf_nan=False)]

M = TypeVar("M", bound=BaseModel)


class RequestInvalid(UsageError):
    """A request the models refused; `problems` holds one ``field.path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReplayRequest(_Body):
    """``POST /admin/replay``: deliveries by ``ids``, or by a filter (``state``, required then,
    with optional ``destination`` and ``since``); or, with ``quarantined: true``, quarantined
    events (all of them, or ``ids``)."""

    ids: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_IDS)
    state: State | None = None
    destination: Name | None = None
    since: Since | None = None
    quarantined: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> ReplayRequest:
        if self.quarantined:
            extra = [k for k in ("state", "destination", "since") if getattr(self, k) is not None]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)}: not used with quarantined: true (give ids or nothing)"
                )
        elif self.ids is not None:
            extra = [k for k in ("state", "destination", "since") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"give either ids or a filter ({', '.join(extra)}), not both")
        elif self.state is None:
            raise ValueError('give ids, or a state (for example "state": "dead")')
        return self


class PauseRequest(_Body):
    """``POST /admin/destinations/<name>/pause`` (an empty body is an empty object)."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON_LENGTH)] = (
        "paused by an operator"
    )


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeliveriesQuery(_Query):
    """``GET /admin/deliveries?state=&destination=&message_uuid=&since=&limit=``."""

    state: State | None = None
    destination: Name | None = None
    message_uuid: Name | None = None
    since: Since | None = None
    limit: int = Field(default=1000, ge=0, le=MAX_LIMIT)


class QuarantineQuery(_Query):
    """``GET /admin/quarantine?limit=``."""

    limit: int = Field(default=1000, ge=0, le=MAX_LIMIT)


def parse(model: type[M], data: Any) -> M:
    """`data` validated by `model`; `RequestInvalid` listing every problem when it is not."""
    if not isinstance(data, dict):
        raise RequestInvalid([f"body: expected a JSON object, found {_kind(data)}"])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestInvalid(problems(e)) from None


def parse_query(model: type[M], args: Any) -> M:
    """A query string (Sanic's ``request.args``: each name maps to a list) validated by `model`;
    a name given twice is refused rather than silently taking one of the values."""
    data: dict[str, Any] = {}
    repeated = []
    for name, values in args.items():
        if len(values) > 1:
            repeated.append(f"{name}: given {len(values)} times; give it once")
        data[name] = values[0]
    if repeated:
        raise RequestInvalid(repeated)
    return parse(model, data)


def problems(e: ValidationError) -> list[str]:
    """One ``field.path: message`` line per pydantic error (``body:`` for the whole object)."""
    out = []
    for err in e.errors(include_url=False):
        loc = err["loc"]
        where = format_loc(loc) if loc else "body"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(f"{where}: {msg}")
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
