"""`HTTPDestination`: the base class of destinations that make one HTTP request per try.

It owns what every HTTP destination would otherwise redo: sending through the process's shared
client (``services.http``) bounded by the destination's ``timeout`` (connect to last byte),
reading at most 64 KiB of the answer, ``Retry-After``, scrubbing secrets from error text, and
the classification of an answer::

    2xx                        delivered
    429                        throttled (Retry-After waited out; does not use up attempts)
    408, 425, 5xx              retry (Retry-After honoured)
    410                        permanent, and the destination is paused until an operator resumes it
    3xx                        permanent (redirects are never followed: configure the final URL)
    other 4xx                  permanent
    timeout, connection error  retry

A subclass builds the request and may refine the classification::

    class Chat(HTTPDestination):
        Options = ChatOptions

        async def deliver(self, delivery):
            body = json.dumps({"text": ...}).encode()
            answer = await self.request("POST", self.options.url, body, {"content-type": ...})
            return answer if isinstance(answer, Outcome) else self.classify(answer)

``self.options.timeout`` (seconds) is used when the options have one, else `DEFAULT_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.config.redact import scrub
from gateway.destination.base import Outcome, Services
from gateway.destination.http import MAX_READ, GatewayClient, parse_retry_after, read_capped

DEFAULT_TIMEOUT = 10.0
#: How much of an error answer's body goes into the attempt record.
SNIPPET = 300
#: Statuses below 500 that are worth another try.
RETRYABLE_STATUS = frozenset({408, 425})


@dataclass(frozen=True)
class Answer:
    """What the receiver answered: status, headers and at most 64 KiB of the body."""

    status: int
    headers: httpx.Headers
    body: bytes

    def snippet(self) -> str:
        return self.body[:SNIPPET].decode("utf-8", "replace").strip()


#: Parsed URLs one destination keeps (`HTTPDestination.request`).
URL_CACHE = 64


class HTTPDestination:
    """See the module docstring. `label` prefixes error texts (``HTTP 503: ...``)."""

    label = "HTTP"

    def __init__(self, name: str, options: Any, services: Services) -> None:
        self.name = name
        self.options = options
        self.services = services
        self.timeout: float = float(getattr(options, "timeout", None) or DEFAULT_TIMEOUT)
        #: Values scrubbed from every error text this destination produces.
        self.secrets: set[str] = set(services.secrets)
        #: URLs this destination sent to, parsed once (httpx parses a ``str`` on every request,
        #: a quarter of the client's CPU per delivery).
        self._urls: dict[str, httpx.URL] = {}

    def scrub(self, text: str) -> str:
        """`text` with this destination's secrets masked."""
        return scrub(text, self.secrets)

    async def request(
        self, method: str, url: str | httpx.URL, body: bytes, headers: dict[str, str]
    ) -> Answer | Outcome:
        """Send once within ``timeout``. An `Answer`, or a ``retry`` `Outcome` when no answer
        came (timeout, connection refused or reset, a protocol error)."""
        timeout = self.timeout
        if isinstance(url, str):
            parsed = self._urls.get(url)
            if parsed is None:
                if len(self._urls) >= URL_CACHE:  # URLs built per event: keep the cache small
                    self._urls.clear()
                parsed = self._urls[url] = httpx.URL(url)
            url = parsed
        client = self.services.http
        direct = client.direct if isinstance(client, GatewayClient) else None
        try:
            async with asyncio.timeout(timeout):
                if direct is not None:
                    fields = _fields(url, client.headers, headers)
                    status, raw, data = await direct.exchange(
                        method, url, fields, body, timeout, MAX_READ
                    )
                    return Answer(status, httpx.Headers(raw), data)
                async with client.stream(
                    method, url, content=body, headers=headers, timeout=timeout
                ) as resp:
                    data = await read_capped(resp)
        except TimeoutError:
            return Outcome.retry(f"timed out after {timeout:g}s")
        except httpx.TimeoutException as e:
            return Outcome.retry(f"timed out after {timeout:g}s ({type(e).__name__})")
        except httpx.TransportError as e:
            text = f"connection error: {type(e).__name__}: {e}".rstrip(": ")
            return Outcome.retry(self.scrub(text))
        except httpx.HTTPError as e:
            return Outcome.retry(self.scrub(f"HTTP error: {type(e).__name__}: {e}"))
        return Answer(resp.status_code, resp.headers, data)

    def describe(self, answer: Answer) -> str:
        """``<label> <status>: <start of the body>``, scrubbed."""
        text = f"{self.label} {answer.status}"
        snippet = answer.snippet()
        return self.scrub(f"{text}: {snippet}" if snippet else text)

    def retry_after(self, answer: Answer) -> float | None:
        return parse_retry_after(answer.headers.get("retry-after"), self.services.clock.now())

    def classify(self, answer: Answer, error: str | None = None) -> Outcome:
        """The outcome of `answer` (see the module docstring); `error` replaces the default
        error text."""
        status = answer.status
        if 200 <= status < 300:
            return Outcome.delivered(status)
        text = error or self.describe(answer)
        if status == 429:
            return Outcome.throttled(text, self.retry_after(answer), status)
        if status in RETRYABLE_STATUS or status >= 500:
            return Outcome.retry(text, status, self.retry_after(answer))
        if status == 410:
            return Outcome.permanent(
                f"{text} (410 Gone: destination {self.name!r} paused until resumed)",
                status,
                pause=True,
            )
        if 300 <= status < 400:
            where = answer.headers.get("location", "?")
            return Outcome.permanent(
                self.scrub(
                    f"{self.label} {status} redirect to {where} not followed (redirects are"
                    " never followed; configure the final URL)"
                ),
                status,
            )
        return Outcome.permanent(text, status)


#: Client defaults not sent on the direct path: bodies are read raw, so none is compressed.
_SKIPPED = frozenset({"accept-encoding"})


def _fields(
    url: httpx.URL, defaults: httpx.Headers, headers: dict[str, str]
) -> list[tuple[bytes, bytes]]:
    """The header fields httpx would send for `headers` on a client with `defaults`: Host, the
    defaults the request does not set, then the request's own (ASCII, as httpx requires)."""
    own = {name.lower() for name in headers}
    fields = [] if "host" in own else [(b"Host", url.netloc)]
    fields += [
        (name, value)
        for name, value in defaults.raw
        if (low := name.decode("latin-1").lower()) not in own and low not in _SKIPPED
    ]
    fields += [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
    return fields
