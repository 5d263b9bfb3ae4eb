"""Hooks behave as pluggy documents: tryfirst/trylast, new- and old-style wrappers, firstresult,
async implementations awaited in pluggy's order, failures named by plugin.

The plugins are real modules (tests/plugin_modules), loaded the two ways users load them: named
under ``plugins:`` in YAML, and installed with an entry point in the ``callback_gateway`` group
(a dist-info directory on the path, which is what an installed package is to importlib.metadata).
The last test runs a real gateway process with the entry-point plugins and reads what its file
destination wrote.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest
from e2e_helpers import event, eventually

from gateway.config import load_config_text
from gateway.errors import PluginError
from gateway.plugin.hooks import call_hook
from gateway.plugin.manager import make_plugin_manager
from gateway.routing.chain import Chain

MODULES = Path(__file__).resolve().parent / "plugin_modules"
BASE = """
destinations:
  a: {type: file, path: a.jsonl}
routes: [{to: a}]
"""
META = {"event_id": "e-1", "source": "revicom", "received_at": 1602874300.0}
SENT = {"callback_event": "delivered", "status": "sent", "message_uuid": "m-1"}


class Clock:
    def now(self) -> float:
        return 1602874300.0

    async def sleep(self, seconds: float) -> None:
        pass


@pytest.fixture(autouse=True)
def plugin_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test plugins importable, and fresh (their module-level records empty)."""
    monkeypatch.syspath_prepend(str(MODULES))
    for name in (
        "order_first",
        "order_last",
        "order_middle",
        "wrapping",
        "old_wrapping",
        "drop_reads",
        "broken_enricher",
    ):
        if name in sys.modules:
            importlib.reload(sys.modules[name])


def chain_for(modules: list[str], config: str = BASE) -> Chain:
    plugins = "plugins: [" + ", ".join(modules) + "]\n"
    return Chain(load_config_text(plugins + config, env={}), None, Clock())


def install_entry_points(site: Path, entry_points: dict[str, str]) -> None:
    """A distribution in `site` whose ``callback_gateway`` entry points are `entry_points`."""
    info = site / "semantics_test_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: semantics-test-plugins\nVersion: 1.0\n"
    )
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text("[callback_gateway]\n" + lines)


# -- order -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "modules",
    [
        ["order_first", "order_middle", "order_last"],
        ["order_last", "order_middle", "order_first"],
        ["order_middle", "order_last", "order_first"],
    ],
)
async def test_tryfirst_and_trylast_hold_whatever_the_registration_order(modules):
    decision = await chain_for(modules).evaluate(SENT, META)
    # Each implementation receives the event with what the ones before it added, so the list
    # is the order pluggy called them in; async ones ran to completion in that order.
    assert decision.enrichment["order"] == ["first", "middle", "last"]
    first, last = sys.modules["order_first"], sys.modules["order_last"]
    assert first.CALLS == ["first"] and last.CALLS == ["last"]


# -- wrappers --------------------------------------------------------------------------------
async def test_a_new_style_wrapper_sees_the_awaited_results_and_may_replace_them():
    decision = await chain_for(["wrapping", "order_first", "order_middle"]).evaluate(SENT, META)
    seen = sys.modules["wrapping"].SEEN
    assert seen == [
        {
            "event_id": "e-1",
            "results": [
                {"order": ["first"]},
                {"order": ["first", "middle"]},
            ],
        }
    ]
    assert decision.enrichment == {"order": ["first", "middle"], "wrapped": 2}
    assert decision.targets[0].enrichment["wrapped"] == 2


async def test_an_old_style_hookwrapper_sees_the_verdicts_and_may_force_the_result():
    chain = chain_for(["old_wrapping", "drop_reads"])
    delivered = await chain.evaluate({**SENT, "status": "unread"}, META)
    read = await chain.evaluate({**SENT, "status": "read"}, META)
    assert sys.modules["old_wrapping"].SEEN == [[False], [False]]
    assert delivered.state == "filtered"
    assert delivered.reason == "dropped by filter_event of plugin 'drop_reads'"
    assert read.state == "routed"  # the wrapper replaced the verdicts with none


# -- failures --------------------------------------------------------------------------------
async def test_a_failing_implementation_is_reported_with_its_plugin_name():
    chain = chain_for(["order_first", "broken_enricher"])
    with pytest.raises(PluginError) as e:
        await chain.evaluate(SENT, META)
    assert e.value.plugin == "broken_enricher"
    assert "plugin 'broken_enricher' raised RuntimeError: the CRM is down" in str(e.value)


async def test_a_wrapper_sees_the_failure_of_the_implementation_it_wraps():
    seen: list[BaseException] = []

    class Wrapper:
        @staticmethod
        def enrich_event(event: Any, meta: Any) -> Any:
            try:
                return (yield)
            except RuntimeError as e:
                seen.append(e)
                return [{"fallback": True}]

    from gateway import hookimpl

    Wrapper.enrich_event = hookimpl(wrapper=True)(Wrapper.enrich_event)  # type: ignore[method-assign]
    loaded = load_config_text(
        "plugins: [broken_enricher]\n" + BASE, env={}, extra_plugins=[Wrapper()]
    )
    decision = await Chain(loaded, None, Clock()).evaluate(SENT, META)
    assert [str(e) for e in seen] == ["the CRM is down"]
    assert decision.enrichment == {"fallback": True}


# -- firstresult -------------------------------------------------------------------------------
async def test_a_firstresult_hook_stops_at_the_first_value_and_never_starts_the_rest():
    spec = pluggy.HookspecMarker("callback_gateway")
    impl = pluggy.HookimplMarker("callback_gateway")
    started: list[str] = []

    class Specs:
        @spec(firstresult=True)
        def pick_channel(self, event: Any) -> Any:
            """A firstresult hook of a test-only spec."""

    class Slow:
        @impl(trylast=True)
        async def pick_channel(self, event: Any) -> Any:
            started.append("slow")
            return "email"

    class Fast:
        @impl
        async def pick_channel(self, event: Any) -> Any:
            started.append("fast")
            return "sms"

    pm = make_plugin_manager(entry_points=False)
    pm.add_hookspecs(Specs)
    pm.register(Slow())
    pm.register(Fast())
    assert await call_hook(pm.hook.pick_channel, event={}) == "sms"
    assert started == ["fast"]


# -- through an entry point, in a real gateway -------------------------------------------------
def test_entry_point_plugins_keep_pluggy_order_and_wrappers_in_a_running_gateway(
    tmp_path: Path, gateway_factory: Any
) -> None:
    site = tmp_path / "site"
    install_entry_points(
        site,
        {
            "t-last": "order_last",
            "t-wrap": "wrapping",
            "t-middle": "order_middle",
            "t-first": "order_first",
        },
    )
    env = {"PYTHONPATH": f"{site}:{MODULES}"}
    config = """
server: {host: 127.0.0.1}
store: sqlite:///var/gateway.db
sources:
  revicom: {path: /callbacks/revicom}
destinations:
  archive: {type: file, path: var/archive.jsonl}
routes: [{to: archive}]
"""
    gw = gateway_factory(config, env=env)
    listing = subprocess.run(
        [sys.executable, "-m", "gateway", "plugins", "-c", "gateway.yaml"],
        cwd=tmp_path,
        env={**gw.env, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "t-wrap 1.0  [entry point, from semantics-test-plugins]" in listing.stdout
    answer = httpx.post(f"{gw.base}/callbacks/revicom", json=[event()], timeout=10)
    assert answer.status_code == 200, answer.text
    archive = tmp_path / "var" / "archive.jsonl"
    eventually(lambda: archive.exists() and archive.read_text(), what="the event archived")
    line = json.loads(archive.read_text().splitlines()[0])
    assert line["enrichment"] == {"order": ["first", "middle", "last"], "wrapped": 3}
