"""The web console driven by a real headless Chromium (Debian's ``chromium`` through its
``chromedriver``, with Selenium) against a real gateway process and a loopback receiver.

An operator logs in, searches a message and reads its timeline (events, the routing decision
including an out-of-order suppression, the quarantine entry, deliveries with their attempts and
payloads), replays a dead delivery and sees it reach the receiver, replays a quarantined event
after a reload fixed its source, pauses and resumes a destination (the CLI agrees), and runs
the route tester (the same result as ``callback-gateway explain``). A screenshot of every page
lands in the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, eventually, status
from gateway_process import GatewayProcess
from receiver import Receiver, Reply

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TOKEN = "console-token-0123456789abcdef"
CONFIG = """
store: sqlite:///var/gateway.db
admin: {{token: {token}}}
sources:
  revicom: {{path: /callbacks/revicom}}
  orders:
    path: /callbacks/orders
    format: json
    options: {{required: [/id, {required}], event: /type}}
destinations:
  crm: {{type: webhook, url: "{rx}/crm", retry: {{attempts: 1}}}}
  ops: {{type: webhook, url: "{rx}/ops"}}
  orders: {{type: webhook, url: "{rx}/orders", payload: envelope}}
routes:
  - name: statuses
    match: {{callback_event: [sent, delivered]}}
    to: [crm]
  - name: orders
    match: {{id: {{exists: true}}}}
    to: [orders]
"""


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, rx: Receiver) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(
        CONFIG.format(token=TOKEN, rx=rx.url, required="/type"),
        tmp_path_factory.mktemp("console-gw"),
    ).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def post(gw: GatewayProcess, path: str, *elements: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{gw.base}{path}",
        content=json.dumps(list(elements)),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def cli(gw: GatewayProcess, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(gw.config_path)],
        cwd=gw.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def admin(gw: GatewayProcess, path: str) -> Any:
    return httpx.get(f"{gw.base}/admin{path}", headers={"Authorization": f"Bearer {TOKEN}"}).json()


def shoot(driver: webdriver.Chrome, shots: Path, name: str) -> Path:
    """A full-page screenshot (the window grows to the page's height for it)."""
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
    )
    driver.set_window_size(1280, min(max(height + 140, 600), 4000))  # + the window's frame
    path = shots / f"{name}.png"
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    return path


def text(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.TAG_NAME, "main").text


def shown(driver: webdriver.Chrome, needle: str) -> str:
    """The page's main text once it contains `needle` (a click's page load is under way)."""
    wait = WebDriverWait(driver, 15, ignored_exceptions=[StaleElementReferenceException])
    wait.until(lambda d: needle in text(d))
    return text(driver)


def login(driver: webdriver.Chrome, gw: GatewayProcess, shots: Path) -> None:
    driver.get(f"{gw.base}/console/")
    assert "/console/login" in driver.current_url
    shoot(driver, shots, "login")
    driver.find_element(By.NAME, "token").send_keys(TOKEN + Keys.ENTER)
    shown(driver, "Latest errors")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Overview"


@pytest.fixture(scope="module")
def story(gw: GatewayProcess, rx: Receiver) -> dict[str, Any]:
    """One message whose ``delivered`` dies at crm (400), whose late ``sent`` is suppressed as
    out of order, and one element of which is quarantined; all settled before the browser
    looks."""
    rx.script(Reply(400, b'{"error":"unknown customer"}'), path="/crm")
    delivered = status("delivered")
    uuid_ = delivered["message_uuid"]
    late = {**status("sent"), "message_uuid": uuid_, "status_time": "2020-10-16T18:50:00Z"}
    broken = {"message_uuid": uuid_, "callback_event": "delivered"}  # no status: quarantined
    assert post(gw, "/callbacks/revicom", delivered)["accepted"] == 1
    [dead] = eventually(
        lambda: [d for d in admin(gw, f"/deliveries?message_uuid={uuid_}") if d["state"] == "dead"],
        what="the crm delivery to die",
    )
    post(gw, "/callbacks/revicom", late, broken)
    return {"uuid": uuid_, "dead": dead["id"]}


@pytest.fixture(scope="module", autouse=True)
def signed_in(browser: webdriver.Chrome, gw: GatewayProcess, shots: Path, story: Any) -> None:
    """Every test starts signed in (and with the story told), whichever of them run."""
    login(browser, gw, shots)


def test_search_shows_the_timeline_of_a_message(browser, gw, shots, story):
    browser.get(f"{gw.base}/console/")
    shoot(browser, shots, "overview")
    page = text(browser)
    assert "revicom" in page and "crm" in page and "Latest errors" in page
    assert story["dead"] in page, "the dead delivery is among the latest errors"

    box = browser.find_element(By.ID, "q")
    box.send_keys(story["uuid"] + Keys.ENTER)
    shown(browser, "callbacks received")
    assert browser.current_url.endswith(f"/console/messages/{story['uuid']}")

    def settled() -> str:
        browser.refresh()
        page = text(browser)
        return page if "out of order" in page else ""

    page = eventually(settled, what="the late status to be suppressed")
    assert "3 callbacks received" in page
    assert "routed to crm (route statuses)" in page
    assert "route 'statuses': filter 'ordering': out of order" in page
    assert "quarantined:" in page and "status" in page
    assert story["dead"] in page and "HTTP 400" in page and "unknown customer" in page
    for details in browser.find_elements(By.TAG_NAME, "details"):
        if details.get_attribute("open") is None:  # open the raw bodies and payloads
            details.find_element(By.TAG_NAME, "summary").click()
    assert '"status_time": "2020-10-16T18:50:00Z"' in text(browser)
    shoot(browser, shots, "message")


def test_replaying_a_dead_delivery_reaches_the_receiver(browser, gw, rx, shots, story):
    browser.get(f"{gw.base}/console/deliveries?state=dead")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Dead letters"
    shoot(browser, shots, "dead-letters")
    browser.find_element(By.CSS_SELECTOR, f'button[name="one"][value="{story["dead"]}"]').click()
    shown(browser, "Replayed 1 delivery.")
    eventually(
        lambda: [
            r
            for r in rx.requests
            if r.path == "/crm" and r.headers.get("webhook-id") == story["dead"]
        ][1:],
        what="the replayed delivery to reach the receiver again",
    )
    browser.get(f"{gw.base}/console/deliveries/{story['dead']}")

    def delivered() -> bool:
        browser.refresh()
        return "delivered" in browser.find_element(By.TAG_NAME, "h1").text

    eventually(delivered, what="the delivery page to say delivered")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.attempts tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == ["dead", "delivered"]
    shoot(browser, shots, "delivery")


def test_replaying_a_quarantined_event_after_a_fix_delivers_it(browser, gw, rx, shots):
    order = {"id": "order-browser-1"}  # no /type, which `orders` requires for now
    assert post(gw, "/callbacks/orders", order)["quarantined"] == 1
    browser.get(f"{gw.base}/console/quarantine")
    assert "order-browser-1" in text(browser) and "/type" in text(browser)
    shoot(browser, shots, "quarantine")

    loaded = gw.logs().count("reload: configuration loaded")
    gw.config_path.write_text(CONFIG.format(token=TOKEN, rx=rx.url, required="/id"))
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGHUP)
    eventually(
        lambda: gw.logs().count("reload: configuration loaded") > loaded,
        what="the fixed configuration to load",
    )

    row = next(
        r
        for r in browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
        if "order-browser-1" in r.text
    )
    row.find_element(By.CSS_SELECTOR, 'button[name="one"]').click()
    shown(browser, "Sent 1 event back through today's chain.")
    [got] = eventually(
        lambda: [r for r in rx.requests if r.path == "/orders"],
        what="the replayed event to be delivered",
    )
    assert json.loads(got.body)["event"] == order
    browser.refresh()
    assert "order-browser-1" not in text(browser)


def destination_row(gw: GatewayProcess, name: str) -> list[str]:
    for line in cli(gw, "destinations", "list").splitlines():
        if line.split()[:1] == [name]:
            return line.split(None, 5)
    raise AssertionError(f"{name} not listed")


def test_pausing_and_resuming_a_destination(browser, gw, shots):
    browser.get(f"{gw.base}/console/destinations")
    browser.find_element(By.ID, "reason-ops").send_keys("CRM maintenance")
    form = browser.find_element(By.ID, "reason-ops").find_element(By.XPATH, "./ancestor::form")
    form.find_element(By.XPATH, ".//button[text()='Pause']").click()
    shown(browser, "Paused ops: CRM maintenance")
    shoot(browser, shots, "destinations")
    assert destination_row(gw, "ops")[-1] == "CRM maintenance"
    row = browser.find_element(By.XPATH, "//tr[th[text()='ops']]")
    row.find_element(By.XPATH, ".//button[text()='Resume']").click()
    shown(browser, "Resumed ops.")
    assert destination_row(gw, "ops")[-1] == "-"


def test_the_route_tester_says_what_explain_says(browser, gw, shots):
    browser.get(f"{gw.base}/console/tester")
    Select(browser.find_element(By.ID, "t-sample")).select_by_visible_text("delivered")
    browser.find_element(By.XPATH, "//button[text()='Explain']").click()
    shown(browser, "Result")
    result = browser.find_element(By.CSS_SELECTOR, "pre.explain").text
    shoot(browser, shots, "tester")
    printed = cli(gw, "explain", "--sample", "delivered")

    def decisions(out: str) -> list[str]:
        return [
            line.strip()
            for line in out.splitlines()
            if re.match(r"\s*(\[|result:|===|payload for)", line)
        ]

    assert "[matched] statuses" in result
    assert decisions(result) == decisions(printed)


def test_screenshots_of_every_page_were_taken(shots):
    taken = sorted(p.stem for p in shots.glob("*.png"))
    assert taken == sorted(
        [
            "login",
            "overview",
            "message",
            "dead-letters",
            "delivery",
            "quarantine",
            "destinations",
            "tester",
        ]
    )
    keep = os.environ.get("CONSOLE_SCREENSHOTS")  # where a developer wants copies
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for p in shots.glob("*.png"):
            shutil.copy(p, Path(keep) / p.name)
