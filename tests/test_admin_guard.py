"""Wrong admin tokens against a real gateway: the console's login and the admin API share one
budget per client address (`gateway.console.guard`), past it both answer 429 even to the right
token, other addresses are untouched, a missing token is not a guess, a right token clears the
count, and the log says so once without the tokens.

Client addresses are told apart with ``X-Forwarded-For`` from a trusted proxy (loopback).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from gateway_process import GatewayProcess

from gateway.config.models import AdminConfig
from gateway.console.guard import AdminGuard

TOKEN = "guard-token-0123456789abcdef"
WRONG = "guard-token-WRONG-0123456789"
CONFIG = f"""
store: sqlite:///var/gateway.db
server: {{trusted_proxies: [127.0.0.1/32]}}
admin: {{token: {TOKEN}, max_failures: 3, failure_window: 1h}}
sources:
  revicom: {{path: /callbacks/revicom}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(CONFIG, tmp_path_factory.mktemp("guard")).start()
    yield process
    process.kill()


def login(gw: GatewayProcess, addr: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{gw.base}/console/login",
        data={"token": token, "next": "/console/"},
        headers={"X-Forwarded-For": addr},
        follow_redirects=False,
        timeout=10,
    )


def api(gw: GatewayProcess, addr: str, token: str | None) -> httpx.Response:
    headers = {"X-Forwarded-For": addr}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{gw.base}/admin/destinations", headers=headers, timeout=10)


@pytest.mark.slow
def test_wrong_tokens_at_either_door_lock_that_address_out_of_both(gw: GatewayProcess) -> None:
    addr = "203.0.113.5"
    assert login(gw, addr, WRONG).status_code == 401
    assert api(gw, addr, WRONG).status_code == 401
    assert login(gw, addr, WRONG).status_code == 401  # the third: the limit

    refused = login(gw, addr, TOKEN)
    assert refused.status_code == 429
    assert "set-cookie" not in refused.headers  # no session, though the token was right
    assert 3500 < int(refused.headers["retry-after"]) <= 3600
    assert "Too many wrong tokens" in refused.text

    answer = api(gw, addr, TOKEN)
    assert answer.status_code == 429
    assert answer.json()["error"] == "too_many_failures"
    assert 3500 < int(answer.headers["retry-after"]) <= 3600

    # Another address is not affected.
    assert api(gw, "203.0.113.6", TOKEN).status_code == 200
    assert login(gw, "203.0.113.6", TOKEN).status_code == 303

    logs = gw.logs()
    reached = [line for line in logs.splitlines() if "wrong tokens from 203.0.113.5" in line]
    assert len(reached) == 1, logs
    assert "console login" in reached[0]
    assert TOKEN not in logs and WRONG not in logs


@pytest.mark.slow
def test_a_missing_token_is_not_a_guess(gw: GatewayProcess) -> None:
    addr = "203.0.113.7"
    for _ in range(5):
        assert api(gw, addr, None).status_code == 401
        assert login(gw, addr, "").status_code == 401
    assert api(gw, addr, TOKEN).status_code == 200


@pytest.mark.slow
def test_a_right_token_clears_the_count(gw: GatewayProcess) -> None:
    addr = "203.0.113.8"
    for _ in range(2):
        assert api(gw, addr, WRONG).status_code == 401
    assert login(gw, addr, TOKEN).status_code == 303
    for _ in range(2):
        assert login(gw, addr, WRONG).status_code == 401
    answer = api(gw, addr, TOKEN)
    assert answer.status_code == 200, answer.text
    assert re.search(r"wrong tokens from 203\.0\.113\.8", gw.logs()) is None


def test_changed_limits_start_the_count_over_and_zero_turns_it_off() -> None:
    guard = AdminGuard()
    strict = AdminConfig(token=TOKEN, max_failures=2, failure_window=60)
    for _ in range(2):
        guard.failed(strict, "198.51.100.1", 0, "admin API")
    assert guard.retry_after(strict, "198.51.100.1", 1) == 59
    assert guard.retry_after(strict, "198.51.100.1", 59.5) == 1  # whole seconds, at least 1
    assert guard.retry_after(strict, "198.51.100.2", 1) is None

    looser = AdminConfig(token=TOKEN, max_failures=5, failure_window=60)  # after a reload
    assert guard.retry_after(looser, "198.51.100.1", 1) is None

    off = AdminConfig(token=TOKEN, max_failures=0)
    for _ in range(50):
        guard.failed(off, "198.51.100.1", 2, "console login")
    assert guard.retry_after(off, "198.51.100.1", 2) is None
