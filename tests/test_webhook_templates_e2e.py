"""Template payloads cannot be turned into other JSON by what a customer writes: a real gateway
delivers to a real loopback receiver, with ``body`` as a YAML mapping and as a string."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import ThreadedReceiver, eventually
from gateway_process import GatewayProcess
from receiver import Receiver

pytestmark = pytest.mark.slow

INJECTION = 'hi", "admin": true, "x": "'
AWKWARD = 'line one\nline "two"\t\\ back </script> \u00e9 \U0001f600'

CONFIG = """
server: {{host: 127.0.0.1}}
store: sqlite:///var/gateway.db
sources:
  orders:
    path: /callbacks/orders
    format: json
    options: {{required: [/id], event: /type}}
destinations:
  tree:
    type: webhook
    url: "{rx}/tree"
    payload: template
    body:
      id: "{{{{ event.id }}}}"
      text: "{{{{ event.text }}}}"
      n: "{{{{ event.n }}}}"
      label: "order {{{{ event.id }}}}: {{{{ event.text }}}}"
      tags: [fixed, "{{{{ event.type }}}}", 7, null]
  string:
    type: webhook
    url: "{rx}/string"
    payload: template
    body: '{{"id": "{{{{ event.id }}}}", "text": "{{{{ event.text }}}}", "n": {{{{ event.n }}}},
            "all": {{{{ event | tojson }}}}}}'
routes:
  - name: both
    to: [tree, string]
"""


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with ThreadedReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, rx: Receiver) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(CONFIG.format(rx=rx.url), tmp_path_factory.mktemp("templates")).start()
    yield proc
    proc.kill()


def received(rx: Receiver, path: str, order_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for request in list(rx.requests):
            if request.path == path:
                body = json.loads(request.body)  # every body is valid JSON
                if body["id"] == order_id:
                    return body
        return None

    return eventually(find, timeout=30, what=f"{order_id} at {path}")


@pytest.mark.parametrize("order_id, text", [("o-inject", INJECTION), ("o-awkward", AWKWARD)])
def test_customer_text_stays_one_string_value_in_both_body_forms(
    gw: GatewayProcess, rx: Receiver, order_id: str, text: str
) -> None:
    element = {"id": order_id, "type": "paid", "text": text, "n": 2.5}
    answer = httpx.post(
        f"{gw.base}/callbacks/orders",
        content=json.dumps([element]),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text

    tree = received(rx, "/tree", order_id)
    assert tree == {
        "id": order_id,
        "text": text,
        "n": 2.5,
        "label": f"order {order_id}: {text}",
        "tags": ["fixed", "paid", 7, None],
    }

    string = received(rx, "/string", order_id)
    assert string == {"id": order_id, "text": text, "n": 2.5, "all": element}
    assert "admin" not in tree and "admin" not in string  # before: an injected "admin": true


def test_check_refuses_a_string_body_that_cannot_be_json(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "gw.yaml"
    path.write_text(
        "sources: {s: {path: /s}}\n"
        "destinations:\n"
        "  crm: {type: webhook, url: 'http://127.0.0.1:9/x', payload: template,\n"
        '        body: \'{"id": "{{ event.id }}", "n": {{ event.n }}\'}\n'
        "  tree: {type: webhook, url: 'http://127.0.0.1:9/y', payload: template,\n"
        "         body: {a: {b: '{{ event.x '}}}\n"
        "routes: [{name: r, to: [crm, tree]}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert any(
        line.startswith("destinations.crm") and "does not render valid JSON" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("destinations.tree") and "body.a.b: template syntax error" in line
        for line in lines
    ), lines
