"""The ``webhook`` destination: one HTTP request per delivery, signed per Standard Webhooks.

Options (``destinations.<name>``)::

    url: https://crm.example.com/hooks   # https://user:password@host/... sends Basic auth
    method: POST                 # default
    headers: {X-Team: ops}       # extra request headers (values may be secrets: they are scrubbed)
    timeout: 10s                 # the whole request, connect to last byte
    payload: original            # original (default) | envelope | template
    body:                        # with payload: template; the gateway builds the JSON
      uuid: "{{ event.message_uuid }}"        # string leaves are templates
      price: "{{ event.price }}"              # one expression keeps its type (a number here)
    # or a string that must render JSON; printed values are escaped, tojson prints a JSON value:
    # body: '{"uuid": "{{ event.message_uuid }}", "event": {{ event | tojson }}}'
    secret: whsec_...            # sign (webhook-timestamp, webhook-signature); empty: unsigned

Credentials in the URL (``https://user:pa%40ss@host/hooks``, percent-encoded as URLs require)
are sent as ``Authorization: Basic`` on every request and removed from the URL itself; a URL
with credentials and an ``Authorization`` header together are refused by ``check``.

Every request carries ``webhook-id: <delivery id>`` (stable across retries and replays, so
receivers can drop repeats) and ``Content-Type: application/json``. With ``secret`` the body is
signed as https://www.standardwebhooks.com/ specifies: ``v1,`` + base64(HMAC-SHA256(key,
f"{id}.{timestamp}.{body}")) with the key base64-decoded from after ``whsec_``.

Classification (the engine owns retries): 2xx delivered; timeouts, connection errors, 408, 425,
5xx retry (``Retry-After`` honoured); 429 throttled (does not use up attempts); 410 permanent and
the destination is paused; 3xx permanent (redirects are never followed); other 4xx permanent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway import hookimpl
from gateway.destination import (
    HTTPDestination,
    Outcome,
    Services,
    envelope_text,
    json_body,
    original_body,
)
from gateway.store import DeliveryRecord
from gateway.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


class WebhookOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = {}
    timeout: Duration = Field(default=10.0, gt=0)
    payload: Literal["original", "envelope", "template"] = "original"
    body: str | dict[str, Any] | list[Any] | None = None
    secret: str | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            url = httpx.URL(v)
        except httpx.InvalidURL as e:
            raise ValueError(f"not a valid URL: {e}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected an http:// or https:// URL")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        # An empty value (``secret: "${CRM_SECRET:-}"`` with the variable unset) means unsigned.
        if not v:
            return None
        signing_key(v)
        return v

    @model_validator(mode="after")
    def _credentials(self) -> WebhookOptions:
        # Checked on the whole model so that the error never quotes the URL (it holds a password).
        if httpx.URL(self.url).userinfo and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError(
                "url: credentials in the URL are sent as Basic auth, and headers has an"
                " Authorization header too; give one of them"
            )
        return self

    @model_validator(mode="after")
    def _body(self) -> WebhookOptions:
        if self.payload == "template":
            if self.body is None or self.body == "":
                raise ValueError(
                    "payload: template needs 'body' (a mapping whose string values are"
                    " templates, or a template string rendering JSON)"
                )
            json_body(self.body)
        elif self.body is not None:
            raise ValueError("'body' is only used with payload: template")
        return self


#: The name the model is imported under (``from gateway_plugins.webhook import Options``).
Options = WebhookOptions


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64)."""
    if not secret.startswith("whsec_"):
        raise ValueError("expected a Standard Webhooks secret: 'whsec_' followed by base64")
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("the part after 'whsec_' is not valid base64") from None


def split_userinfo(url: httpx.URL) -> tuple[httpx.URL, str | None]:
    """`url` without its userinfo, and the ``Authorization: Basic`` value it stood for (None
    when the URL has none). Sending both would fail in the HTTP client ("Cannot combine
    AUTHORIZATION header with ... credentials encoded in URL")."""
    if not url.userinfo:
        return url, None
    pair = f"{url.username}:{url.password}".encode()  # httpx percent-decodes both
    return url.copy_with(userinfo=b""), "Basic " + base64.b64encode(pair).decode("ascii")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


class Webhook(HTTPDestination):
    """See the module docstring; sending and classification come from `HTTPDestination`."""

    Options = WebhookOptions
    options: WebhookOptions

    def __init__(self, name: str, options: WebhookOptions, services: Services) -> None:
        super().__init__(name, options, services)
        self.secrets |= set(options.headers.values())  # receivers may echo them back
        self.key = signing_key(options.secret) if options.secret else None
        self.template = json_body(options.body) if options.body is not None else None
        self.url, basic = split_userinfo(httpx.URL(options.url))  # parsed once
        lowered = {k.lower() for k in options.headers}
        self.base_headers = dict(options.headers)
        if basic is not None:
            self.base_headers["authorization"] = basic
            self.secrets.add(basic)
        if "content-type" not in lowered:
            self.base_headers["content-type"] = "application/json"

    def body(self, delivery: DeliveryRecord) -> bytes:
        """The request body; `ValueError` when a template cannot render valid JSON."""
        if self.options.payload == "envelope":
            return envelope_text(delivery).encode("utf-8")
        if self.template is not None:
            return self.template.render(delivery)
        return original_body(delivery)

    def headers(self, delivery: DeliveryRecord, body: bytes) -> dict[str, str]:
        headers = dict(self.base_headers)
        headers["webhook-id"] = delivery.id
        if self.key is not None:
            ts = int(self.services.clock.now())
            headers["webhook-timestamp"] = str(ts)
            headers["webhook-signature"] = sign(self.key, delivery.id, ts, body)
        return headers

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        try:
            body = self.body(delivery)
        except ValueError as e:
            return Outcome.permanent(self.scrub(str(e)))
        answer = await self.request(
            self.options.method, self.url, body, self.headers(delivery, body)
        )
        return answer if isinstance(answer, Outcome) else self.classify(answer)


@hookimpl
def register_destinations(register: Any) -> None:
    register("webhook", Webhook)
