"""The web console over plain HTTP against a real gateway: it is off without ``admin.token``,
every page needs a session, a wrong token opens none, the cookie's attributes, CSRF on every
state change (refused with 403 and nothing changed), GETs on action URLs change nothing, and
logging out ends the session even for a copied cookie.

The browser-driven tests are in ``test_console_browser.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, eventually, status
from gateway_process import GatewayProcess
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

TOKEN = "console-token-0123456789abcdef"
CONFIG = """
store: sqlite:///var/gateway.db
admin: {{token: {token}, session_ttl: 2h, secure_cookie: true}}
sources:
  revicom: {{path: /callbacks/revicom}}
destinations:
  crm: {{type: webhook, url: "{rx}/crm", retry: {{attempts: 1}}}}
  ops: {{type: webhook, url: "{rx}/ops"}}
routes:
  - name: to-crm
    match: {{callback_event: delivered}}
    to: [crm]
"""
PAGES = [
    "/console/",
    "/console/deliveries",
    "/console/deliveries?state=dead",
    "/console/quarantine",
    "/console/destinations",
    "/console/tester",
    "/console/search?q=x",
]


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, rx: Receiver
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    on = GatewayProcess(CONFIG.format(token=TOKEN, rx=rx.url), tmp_path_factory.mktemp("con"))
    off = GatewayProcess(
        "sources: {revicom: {path: /callbacks/revicom}}\n", tmp_path_factory.mktemp("con-off")
    )
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(GatewayProcess.start, [on, off]))
    yield on, off
    for gw in started:
        gw.kill()


@pytest.fixture(scope="module")
def gw(servers: tuple[GatewayProcess, GatewayProcess]) -> GatewayProcess:
    return servers[0]


def client(gw: GatewayProcess, cookie: str | None = None) -> httpx.Client:
    """A client that follows no redirect. The cookie is `Secure` (configured), which a cookie
    jar keeps off plain HTTP, so it is sent by hand."""
    headers = {"Cookie": f"cg_console={cookie}"} if cookie else {}
    return httpx.Client(base_url=gw.base, follow_redirects=False, headers=headers, timeout=10)


def login(gw: GatewayProcess) -> tuple[str, str]:
    """(session cookie value, CSRF token) after a real login."""
    with client(gw) as c:
        answer = c.post("/console/login", data={"token": TOKEN, "next": "/console/"})
        assert answer.status_code == 303, answer.text
        cookie = re.search(r"cg_console=([^;]+)", answer.headers["set-cookie"]).group(1)
    with client(gw, cookie) as c:
        page = c.get("/console/")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    return cookie, csrf


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(gw.config_path)],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )


def paused(gw: GatewayProcess) -> dict[str, Any]:
    listed = httpx.get(
        f"{gw.base}/admin/destinations", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    return {d["name"]: d["paused"] for d in listed}


def dead_delivery(gw: GatewayProcess, rx: Receiver) -> tuple[str, str]:
    """(message_uuid, delivery id) of a fresh dead delivery to crm."""
    rx.script(Reply(400, b"no such customer"), path="/crm")
    event = status("delivered")
    answer = httpx.post(
        f"{gw.base}/callbacks/revicom",
        content=json.dumps([event]),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200
    api = f"{gw.base}/admin/deliveries"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def found() -> list[dict[str, Any]]:
        listed = httpx.get(api, params={"message_uuid": event["message_uuid"]}, headers=auth)
        return [d for d in listed.json() if d["state"] == "dead"]

    [dead] = eventually(found, what="the delivery to die")
    return event["message_uuid"], dead["id"]


def state_of(gw: GatewayProcess, delivery_id: str) -> str:
    answer = httpx.get(
        f"{gw.base}/admin/deliveries/{delivery_id}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    return answer.json()["state"]


def test_the_console_is_not_there_without_an_admin_token(servers):
    _, off = servers
    with client(off) as c:
        for path in [*PAGES, "/console/login", "/console/static/console.css"]:
            assert c.get(path).status_code == 404, path
        assert c.post("/console/login", data={"token": TOKEN}).status_code == 404


def test_without_a_session_every_page_leads_to_the_login_and_reveals_nothing(gw, rx):
    message_uuid, delivery_id = dead_delivery(gw, rx)
    with client(gw) as c:
        for path in [
            *PAGES,
            f"/console/messages/{message_uuid}",
            f"/console/deliveries/{delivery_id}",
        ]:
            answer = c.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/console/login?next=")
        login_page = c.get(c.get(f"/console/messages/{message_uuid}").headers["location"])
        assert login_page.status_code == 200
        assert 'type="password"' in login_page.text and 'name="token"' in login_page.text
        assert delivery_id not in login_page.text and "no such customer" not in login_page.text
        # An action without a session: refused, nothing done.
        answer = c.post("/console/deliveries/replay", data={"one": delivery_id})
        assert answer.status_code == 403
    assert state_of(gw, delivery_id) == "dead"


def test_a_wrong_token_opens_no_session(gw):
    with client(gw) as c:
        for wrong in ["", "nope", TOKEN + "x", TOKEN.upper()]:
            answer = c.post("/console/login", data={"token": wrong})
            assert answer.status_code == 401
            assert "set-cookie" not in answer.headers
            assert "not right" in answer.text
        assert c.get("/console/").status_code == 303
    with client(gw, "forged.9999999999.00") as c:
        assert c.get("/console/").status_code == 303
    assert TOKEN not in gw.logs()


def test_the_session_cookie_is_httponly_samesite_strict_secure_and_expires(gw):
    with client(gw) as c:
        answer = c.post("/console/login", data={"token": TOKEN, "next": "/console/quarantine"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/quarantine"
    cookie = answer.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/console", "Max-Age=7200"):
        assert attribute in cookie, cookie
    assert TOKEN not in cookie


def test_a_login_never_redirects_off_the_console(gw):
    with client(gw) as c:
        for target in ["https://elsewhere.example/", "//elsewhere.example/x", "/admin/replay"]:
            answer = c.post("/console/login", data={"token": TOKEN, "next": target})
            assert answer.headers["location"] == "/console/"


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(gw, rx):
    _, delivery_id = dead_delivery(gw, rx)
    cookie, csrf = login(gw)
    _, other_csrf = login(gw)
    assert other_csrf != csrf, "each session has its own token"
    with client(gw, cookie) as c:
        for data in [{}, {"csrf": ""}, {"csrf": other_csrf}, {"csrf": csrf + "0"}]:
            assert (
                c.post(
                    "/console/destinations/ops/pause", data={**data, "reason": "test"}
                ).status_code
                == 403
            )
            assert (
                c.post("/console/deliveries/replay", data={**data, "one": delivery_id}).status_code
                == 403
            )
            assert (
                c.post("/console/quarantine/replay", data={**data, "all": "1"}).status_code == 403
            )
            assert c.post("/console/logout", data=data).status_code == 403
        assert paused(gw)["ops"] is None
        assert state_of(gw, delivery_id) == "dead"
        assert c.get("/console/").status_code == 200, "still logged in"
        # With the token the same requests work.
        answer = c.post("/console/destinations/ops/pause", data={"csrf": csrf, "reason": "t"})
        assert answer.status_code == 303
        assert paused(gw)["ops"] == "t"
        assert c.post("/console/destinations/ops/resume", data={"csrf": csrf}).status_code == 303
        assert paused(gw)["ops"] is None


def test_a_get_on_an_action_url_changes_nothing(gw, rx):
    _, delivery_id = dead_delivery(gw, rx)
    cookie, _ = login(gw)
    with client(gw, cookie) as c:
        for path in [
            "/console/destinations/ops/pause?reason=x",
            "/console/destinations/ops/resume",
            f"/console/deliveries/replay?one={delivery_id}&id={delivery_id}",
            "/console/quarantine/replay?all=1",
            "/console/logout",
        ]:
            answer = c.get(path)
            assert answer.status_code in (404, 405), (path, answer.status_code)
        assert paused(gw)["ops"] is None
        assert state_of(gw, delivery_id) == "dead"
        assert c.get("/console/").status_code == 200, "a GET does not log out"


def test_logging_out_ends_the_session_even_for_a_copied_cookie(gw):
    cookie, csrf = login(gw)
    with client(gw, cookie) as c:
        answer = c.post("/console/logout", data={"csrf": csrf})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login"
        assert (
            'cg_console=""' in answer.headers["set-cookie"]
            or "Max-Age=0" in answer.headers["set-cookie"]
        )
    with client(gw, cookie) as copied:
        assert copied.get("/console/").status_code == 303


def test_search_leads_to_the_message_the_delivery_or_says_nothing_matches(gw, rx):
    message_uuid, delivery_id = dead_delivery(gw, rx)
    cookie, _ = login(gw)
    with client(gw, cookie) as c:
        assert (
            c.get("/console/search", params={"q": message_uuid}).headers["location"]
            == f"/console/messages/{message_uuid}"
        )
        assert (
            c.get("/console/search", params={"q": delivery_id}).headers["location"]
            == f"/console/deliveries/{delivery_id}"
        )
        event_id = httpx.get(
            f"{gw.base}/admin/deliveries/{delivery_id}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).json()["event_id"]
        assert (
            c.get("/console/search", params={"q": event_id}).headers["location"]
            == f"/console/messages/{message_uuid}#{event_id}"
        )
        missing = c.get("/console/search", params={"q": "no-such-thing"})
        assert missing.status_code == 404 and "Nothing matches" in missing.text
        page = c.get(f"/console/messages/{message_uuid}")
        assert delivery_id in page.text and "no such customer" in page.text
        assert c.get("/console/messages/unknown-uuid").status_code == 404
