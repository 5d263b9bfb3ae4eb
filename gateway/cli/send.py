"""`callback-gateway send URL (--sample NAME | --file F)`: post callbacks like the provider does.

Credentials come from the URL's userinfo (percent-encoded as RFC 3986 allows) and are sent as
HTTP Basic. Exits 0 on a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import unquote

import httpx

from gateway import samples
from gateway.errors import GatewayError, UsageError


def body_from(sample: str | None, file: str | None) -> bytes:
    if file is not None:
        try:
            return Path(file).read_bytes()
        except OSError as e:
            raise UsageError(f"{file}: cannot read: {e.strerror or e}") from None
    return samples.load(sample or "delivered")


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without userinfo, and (user, password) percent-decoded, if present."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise UsageError(f"invalid URL: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"expected an http:// or https:// URL, got {url!r}")
    userinfo = parsed.userinfo.decode("ascii")
    if not userinfo:
        return str(parsed), None
    user, _, password = userinfo.partition(":")
    clean = parsed.copy_with(username=None, password=None)
    return str(clean), (unquote(user), unquote(password))


def send(url: str, body: bytes, timeout: float = 10.0) -> int:
    target, auth = split_userinfo(url)
    try:
        answer = httpx.post(
            target,
            content=body,
            auth=auth,
            timeout=timeout,
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as e:
        raise GatewayError(f"cannot reach {target}: {e}") from None
    print(f"{answer.status_code} {answer.reason_phrase}")
    if answer.text:
        print(answer.text)
    return 0 if answer.is_success else 1


def run_send(args: object) -> int:
    if not getattr(args, "url", None):
        raise UsageError("send needs a URL, for example http://user:pass@127.0.0.1:8080/cb")
    body = body_from(getattr(args, "sample", None), getattr(args, "file", None))
    code = send(args.url, body)  # type: ignore[attr-defined]
    sys.stdout.flush()
    return code
