"""The configuration schema (pydantic models, unknown keys rejected).

Type-specific destination options, source-format options and component references are checked
in `gateway.config.load` after plugins are loaded, because plugins define those names.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from gateway.units import Rate, parse_duration, parse_rate, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
RateLimit = Annotated[Rate, BeforeValidator(parse_rate)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Dedupe keys live at least this long: the provider resends for about 24 hours.
MIN_DEDUPE_RETENTION = 25 * 3600.0


class Strict(BaseModel):
    """Base: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def _networks(value: Any) -> Any:
    if isinstance(value, list):
        return [ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v for v in value]
    return value


Networks = Annotated[list[Network], BeforeValidator(_networks)]


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_body_size: Size = 1024 * 1024
    #: Proxies whose `X-Forwarded-For` is believed; without them the header is ignored.
    trusted_proxies: Networks = []
    #: Where `run` writes its process id, so `callback-gateway reload` can signal it.
    pid_file: str = "var/gateway.pid"
    #: Open client connections per worker process (see gateway.server.limits).
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    #: The whole request header must arrive within this (408 otherwise).
    header_timeout: Duration = Field(default=10.0, gt=0)
    #: The whole body must arrive within this once the header is in (408 otherwise).
    body_timeout: Duration = Field(default=30.0, gt=0)
    #: An idle connection between two requests is closed after this.
    keep_alive_timeout: Duration = Field(default=75.0, gt=0)
    #: A larger request header is answered 431.
    max_header_size: Size = Field(default=8 * 1024, ge=1024, le=1024 * 1024)


class BasicAuthConfig(Strict):
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)


class AuthConfig(Strict):
    basic: BasicAuthConfig | None = None
    allow_ips: Networks | None = None
    realm: str = "callback-gateway"
    #: Failed Basic-auth attempts one client address may make per `failure_window`; past
    #: that it is answered 429 until the window ends (0: no limit). See gateway.intake.throttle.
    max_failures: int = Field(default=10, ge=0)
    failure_window: Duration = Field(default=60.0, gt=0)


class SourceConfig(Strict):
    path: str
    format: str = "revicom"
    auth: AuthConfig = AuthConfig()
    on_invalid: Literal["quarantine", "reject"] = "quarantine"
    #: Elements one request body may hold; a body with more is refused with 413 before any of
    #: it is stored, which also bounds what one request can add to the quarantine.
    max_events: int = Field(default=10_000, ge=1)
    #: Options for the source format (for `json`: how to derive the dedupe key).
    options: dict[str, Any] = {}
    #: Raise a ``source_silent`` event when nothing arrived for this long (and
    #: ``source_resumed`` when traffic returns).
    expect_within: Duration | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if (
            not v.startswith("/")
            or v.startswith("/admin")
            or v in ("/healthz", "/readyz", "/metrics")
        ):
            raise ValueError(
                "must start with '/' and not be a built-in path"
                " (/healthz, /readyz, /metrics, /admin)"
            )
        return v


class RetryConfig(Strict):
    """Retry policy; `attempts` counts every try, so 3 means at most three requests."""

    attempts: int = Field(default=12, ge=1)
    initial: Duration = 1.0
    max_interval: Duration = 600.0
    max_age: Duration = 86400.0


class PartialRetry(Strict):
    """A destination's `retry`: keys it leaves out come from the top-level `retry`."""

    attempts: int | None = Field(default=None, ge=1)
    initial: Duration | None = None
    max_interval: Duration | None = None
    max_age: Duration | None = None

    def over(self, base: RetryConfig) -> RetryConfig:
        return base.model_copy(update=self.model_dump(exclude_none=True))


class DeliveryConfig(Strict):
    concurrency: int = Field(default=8, ge=1, le=1024)
    lease: Duration = 30.0
    #: Delivery processes `run` starts beside the serving process (0: deliver in it).
    processes: int = Field(default=0, ge=0, le=64)


class AdminConfig(Strict):
    """The admin HTTP API under /admin and the web console under /console/: off unless `token`
    is set (a bearer token for the API, the console's login)."""

    token: str | None = None
    #: How long a console login lasts.
    session_ttl: Duration = 12 * 3600.0
    #: Mark the console's session cookie ``Secure`` even when the gateway itself serves plain
    #: HTTP (behind a TLS-terminating proxy). Over HTTPS it is always ``Secure``.
    secure_cookie: bool = False
    #: Wrong tokens (console logins and API requests together) one client address may send per
    #: `failure_window`; past that it is answered 429 until the window ends. 0: no limit.
    max_failures: int = Field(default=10, ge=0)
    failure_window: Duration = Field(default=60.0, gt=0)

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and 0 < len(v) < 16:
            raise ValueError("use at least 16 characters (or leave it empty to disable /admin)")
        return v or None

    @field_validator("session_ttl")
    @classmethod
    def _session_ttl(cls, v: float) -> float:
        if v < 60:
            raise ValueError("use at least 1m")
        return v


class RetentionConfig(Strict):
    """How long the store keeps each kind of record (docs/configuration.md, "retention").
    Pending and in-flight deliveries, their events, destination pauses and the silence alarm's
    state are kept whatever these say."""

    #: Dedupe keys, from first sight; also the window of plugin marks (ordering, Slack threads).
    dedupe: Duration = MIN_DEDUPE_RETENTION
    #: Events that finished routing, from receipt, and while a delivery of theirs is kept.
    events: Duration = 7 * 86400.0
    #: Delivered deliveries (with their attempts), from delivery.
    delivered: Duration = 7 * 86400.0
    #: Dead deliveries (with their attempts), from when they died.
    dead: Duration = 30 * 86400.0
    #: Quarantined events, from quarantine.
    quarantined: Duration = 30 * 86400.0
    #: How often a retention pass runs.
    interval: Duration = 600.0
    #: A WARNING is logged (once per pass) when the store's filesystem has less free space.
    min_free_space: Size = 1024 * 1024 * 1024

    @field_validator("dedupe")
    @classmethod
    def _dedupe(cls, v: float) -> float:
        if v < MIN_DEDUPE_RETENTION:
            raise ValueError("must be at least 25h: the provider resends for about a day")
        return v

    @field_validator("events", "delivered", "dead", "quarantined", "interval")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError("must be at least 1s")
        return v


class DestinationConfig(BaseModel):
    """One destination: common keys here, type-specific keys in `options` (its plugin checks
    them)."""

    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)

    type: str
    retry: PartialRetry | None = None
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    rate_limit: RateLimit | None = None
    enabled: bool = True

    @property
    def options(self) -> dict[str, Any]:
        """The type-specific keys as written (after interpolation)."""
        return dict(self.model_extra or {})


class RouteConfig(Strict):
    name: str | None = None
    match: dict[str, Any] = {}
    when: str | None = None
    enrich: list[str] = []
    filter: list[str] = []
    to: list[str] = Field(min_length=1)
    stop: bool = False
    #: The ``ordering`` filter (out-of-order status protection) runs on every route unless
    #: the route sets ``ordering: false`` (docs/plugins.md, "Ordering protection").
    ordering: bool = True

    @field_validator("to", "enrich", "filter", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("match")
    @classmethod
    def _match(cls, v: dict[str, Any]) -> dict[str, Any]:
        from gateway.conditions.match import compile_match

        compile_match(v)  # raises MatchSpecError (a ValueError) naming each bad key
        return v

    @field_validator("when")
    @classmethod
    def _when(cls, v: str | None) -> str | None:
        if v is not None:
            from gateway.conditions.expressions import compile_when

            compile_when(v)  # raises ExpressionError (a ValueError) with Jinja's message
        return v


class Config(Strict):
    """The whole validated configuration. `raw` keeps the interpolated tree for redacted dumps."""

    server: ServerConfig = ServerConfig()
    store: str = "sqlite:///var/gateway.db"
    plugins: list[str] = []
    sources: dict[str, SourceConfig] = {}
    destinations: dict[str, DestinationConfig] = {}
    retry: RetryConfig = RetryConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    retention: RetentionConfig = RetentionConfig()
    admin: AdminConfig = AdminConfig()
    #: Named filter / enricher instances: ``name: {type: component, ...options}``; ``type``
    #: defaults to the name, so ``error_text: {codes: {...}}`` configures the built-in.
    filters: dict[str, dict[str, Any]] = {}
    enrichers: dict[str, dict[str, Any]] = {}
    routes: list[RouteConfig] = []
    log_format: Literal["text", "json"] = "text"
    #: ``info`` logs one line per request and per delivery outcome; ``warning`` keeps only
    #: problems (refused requests, retries and dead deliveries are logged at WARNING or above).
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v.startswith(
            ("sqlite:///", "redis://", "rediss://", "postgresql://", "postgres://")
        ):
            raise ValueError(
                "expected sqlite:///path/to.db (or postgresql://user@host:5432/db,"
                " redis://host:6379/0)"
            )
        return v

    def retry_for(self, destination: str) -> RetryConfig:
        """The effective retry policy of one destination."""
        dest = self.destinations[destination]
        return dest.retry.over(self.retry) if dest.retry else self.retry

    def concurrency_for(self, destination: str) -> int:
        return self.destinations[destination].concurrency or self.delivery.concurrency
