"""The shared outbound client's helpers (gateway/destination/http.py)."""

from __future__ import annotations

import email.utils

import pytest

from gateway.destination.http import make_http_client, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("soon", None),
    ],
)
def test_retry_after_in_seconds(value, seconds):
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_as_an_http_date():
    assert parse_retry_after(email.utils.formatdate(NOW + 300, usegmt=True), NOW) == 300.0
    assert parse_retry_after(email.utils.formatdate(NOW - 300, usegmt=True), NOW) == 0.0
    naive = email.utils.formatdate(NOW + 60).replace("+0000", "-0000")
    assert parse_retry_after(naive, NOW) == 60.0


async def test_the_client_never_follows_redirects_and_an_unknown_transport_is_refused():
    client = make_http_client()
    assert client.follow_redirects is False
    await client.aclose()
    with pytest.raises(ValueError, match="unknown HTTP transport"):
        make_http_client("curl")


@pytest.mark.parametrize("transport", ["h1", "aiohttp", "httpx"])
async def test_cookies_a_receiver_sets_are_not_sent_with_later_deliveries(transport):
    from receiver import Receiver, Reply

    async with Receiver(Reply(200, headers={"Set-Cookie": "session=abc; Path=/"})) as rx:
        client = make_http_client(transport)
        try:
            for _ in range(2):
                await client.post(rx.url + "/in", content=b"[]")
        finally:
            await client.aclose()
    assert "cookie" not in rx.requests[1].headers


async def test_a_refused_plain_http_connection_says_so_without_ssl():
    import httpx
    from gateway_process import free_port

    port = free_port()  # bound and released: nothing listens there
    client = make_http_client("aiohttp")
    try:
        with pytest.raises(httpx.ConnectError) as info:
            await client.post(f"http://127.0.0.1:{port}/in", content=b"[]")
    finally:
        await client.aclose()
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"
