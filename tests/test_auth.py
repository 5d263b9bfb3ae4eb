"""gateway.intake.auth: Basic credentials, the client address behind proxies, and the allowlist."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from gateway.intake.auth import BasicAuth, address_allowed, client_address


def basic(userpass: str | bytes) -> str:
    raw = userpass.encode() if isinstance(userpass, str) else userpass
    return "Basic " + base64.b64encode(raw).decode("ascii")


def nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


AUTH = BasicAuth("revicom", "s3cr@t:/pw")


def test_the_right_credentials_pass() -> None:
    assert AUTH.check(basic("revicom:s3cr@t:/pw"))


def test_the_scheme_name_is_case_insensitive() -> None:
    token = base64.b64encode(b"revicom:s3cr@t:/pw").decode()
    assert AUTH.check(f"basic {token}")
    assert AUTH.check(f"BASIC {token}")


@pytest.mark.parametrize(
    "header",
    [
        basic("other:s3cr@t:/pw"),
        basic("revicom:wrong"),
        basic("revicom:s3cr@t:/pw "),
        basic("revicom:"),
        basic(":s3cr@t:/pw"),
        basic("Revicom:s3cr@t:/pw"),
    ],
    ids=["wrong-user", "wrong-password", "password-suffix", "empty-password", "no-user", "case"],
)
def test_wrong_credentials_fail(header: str) -> None:
    assert not AUTH.check(header)


def test_a_decoded_value_without_a_colon_fails_even_if_it_equals_the_username() -> None:
    assert not BasicAuth("revicom", "x").check(basic("revicom"))


def test_the_password_may_contain_colons_because_only_the_first_one_splits() -> None:
    assert BasicAuth("u", "a:b:c").check(basic("u:a:b:c"))


@pytest.mark.parametrize("token", ["not base64!", "cmV2aWNvbTpz=x", "%%%", "YQ"])
def test_bad_base64_fails_without_raising(token: str) -> None:
    assert not AUTH.check(f"Basic {token}")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"revicom:s3cr@t:/pw").decode(),
        "Digest username=revicom",
        base64.b64encode(b"revicom:s3cr@t:/pw").decode(),
    ],
    ids=["none", "empty", "scheme-only", "scheme-space", "bearer", "digest", "no-scheme"],
)
def test_missing_or_non_basic_authorization_fails(header: str | None) -> None:
    assert not AUTH.check(header)


def test_a_unicode_password_is_compared_as_utf8() -> None:
    auth = BasicAuth("José", "пароль✓")
    assert auth.check(basic("José:пароль✓".encode()))
    assert not auth.check(basic("José:пароль".encode()))
    # The same text in Latin-1 is a different byte string: not accepted.
    assert not auth.check(basic("José:pass".encode("latin-1")))


# -- client_address ---------------------------------------------------------------------------


def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    assert client_address("10.0.0.5", "185.203.96.7", []) == "10.0.0.5"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("10.0.0.5", "185.203.96.7", nets("192.168.0.0/16")) == "10.0.0.5"


def test_a_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert client_address("10.0.0.5", None, nets("10.0.0.0/8")) == "10.0.0.5"
    assert client_address("10.0.0.5", "", nets("10.0.0.0/8")) == "10.0.0.5"


def test_behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_hop() -> None:
    # The left-most entries are whatever the client claimed; only hops appended by our own
    # proxies are believed, so the right-most address that is not a trusted proxy wins.
    xff = "1.2.3.4, 185.203.96.7, 10.0.0.9"
    assert client_address("10.0.0.5", xff, nets("10.0.0.0/8")) == "185.203.96.7"


def test_a_spoofed_leftmost_hop_does_not_win() -> None:
    xff = "185.203.96.7, 6.6.6.6"
    assert client_address("10.0.0.5", xff, nets("10.0.0.0/8")) == "6.6.6.6"


def test_when_every_hop_is_trusted_the_peer_is_returned() -> None:
    assert client_address("10.0.0.5", "10.0.0.7, 10.0.0.8", nets("10.0.0.0/8")) == "10.0.0.5"


def test_an_unparseable_hop_is_returned_so_the_allowlist_refuses_it() -> None:
    addr = client_address("10.0.0.5", "185.203.96.7, junk", nets("10.0.0.0/8"))
    assert addr == "junk"
    assert not address_allowed(addr, nets("0.0.0.0/0"))


def test_an_ipv4_mapped_ipv6_peer_matches_an_ipv4_trusted_proxy() -> None:
    assert client_address("::ffff:10.0.0.5", "185.203.96.7", nets("10.0.0.0/8")) == "185.203.96.7"


def test_ipv6_peers_and_hops() -> None:
    assert client_address("fd00::1", "2001:db8::7", nets("fd00::/8")) == "2001:db8::7"
    assert client_address("2001:db8::1", "185.203.96.7", nets("fd00::/8")) == "2001:db8::1"


# -- address_allowed --------------------------------------------------------------------------


def test_address_allowed_checks_cidrs() -> None:
    allow = nets("185.203.96.7/32", "10.1.0.0/16")
    assert address_allowed("185.203.96.7", allow)
    assert address_allowed("10.1.200.3", allow)
    assert not address_allowed("185.203.96.8", allow)
    assert not address_allowed("127.0.0.1", allow)


def test_an_ipv4_mapped_ipv6_address_matches_its_ipv4_network() -> None:
    allow = nets("185.203.96.7/32")
    assert address_allowed("::ffff:185.203.96.7", allow)
    assert not address_allowed("::ffff:185.203.96.8", allow)


def test_ipv4_and_ipv6_networks_do_not_match_across_versions() -> None:
    assert not address_allowed("::1", nets("127.0.0.0/8"))
    assert not address_allowed("127.0.0.1", nets("::/0"))
    assert address_allowed("::1", nets("::1/128"))


@pytest.mark.parametrize("addr", ["", "not-an-ip", "999.1.1.1"])
def test_an_unparseable_address_is_never_allowed(addr: str) -> None:
    assert not address_allowed(addr, nets("0.0.0.0/0", "::/0"))
