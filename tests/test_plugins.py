"""The plugin surface: registration, collisions, misspelled hooks, async hooks, the `plugins`
report, and the example third-party package (examples/gateway-plugin-example) installed and
driven end to end through a running gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from receiver import Receiver

from gateway import hookimpl
from gateway.cli.plugins import plugins_info, plugins_report
from gateway.config import load_config_text
from gateway.errors import ConfigError
from gateway.plugin.hooks import call_hook
from gateway.plugin.manager import make_plugin_manager
from gateway.routing.chain import Chain

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gateway-plugin-example"
BASE = """
destinations:
  a: {type: file, path: a.jsonl}
routes: [{to: a}]
"""
META = {"event_id": "e-1", "source": "revicom", "received_at": 1602874300.0}


class NoOptions(BaseModel):
    pass


class Component:
    Options = NoOptions

    def __init__(self, options):
        pass


def named(name: str, **hooks: Any) -> object:
    """A plugin object called `name` with the given hook implementations."""
    cls = type(name, (), {"__name__": name, **{k: hookimpl(v) for k, v in hooks.items()}})
    return cls()


# -- registration ----------------------------------------------------------------------------
def test_a_name_registered_twice_is_an_error_naming_both_plugins():
    one = named("alpha", register_enrichers=lambda self, register: register("team", Component))
    two = named("beta", register_enrichers=lambda self, register: register("team", Component))
    with pytest.raises(ConfigError) as e:
        load_config_text(BASE, env={}, extra_plugins=[one, two])
    (line,) = e.value.problems
    assert line.startswith("plugins: enricher 'team' is registered by both ")
    assert "'alpha'" in line and "'beta'" in line


def test_a_plugin_cannot_take_over_a_built_in_name():
    rogue = named("rogue", register_filters=lambda self, register: register("ordering", Component))
    with pytest.raises(ConfigError) as e:
        load_config_text(BASE, env={}, extra_plugins=[rogue])
    assert e.value.problems == [
        "plugins: filter 'ordering' is registered by both 'rogue' and 'ordering'"
    ]


def test_a_component_without_an_options_model_is_refused():
    sloppy = named("sloppy", register_destinations=lambda self, register: register("x", object))
    with pytest.raises(ConfigError, match="'sloppy' registered 'x' without an Options model"):
        load_config_text(BASE, env={}, extra_plugins=[sloppy])


def test_a_misspelled_hook_implementation_fails_at_startup():
    typo = named("typo", enrich_events=lambda self, event, meta: None)
    with pytest.raises(ConfigError) as e:
        make_plugin_manager(extra=[typo])
    (line,) = e.value.problems
    assert line.startswith("plugins: ")
    assert "enrich_events" in line and "typo" in line


def test_a_plugin_module_that_cannot_be_imported_is_one_problem_with_its_key_path():
    with pytest.raises(ConfigError) as e:
        load_config_text("plugins: [no_such_module_here]\n" + BASE, env={})
    assert any(
        p.startswith("plugins[0]: cannot import 'no_such_module_here'") for p in e.value.problems
    )


def test_a_plugin_source_format_is_usable_in_sources():
    class Lines:
        Options = NoOptions

        def __init__(self, options):
            pass

        def check(self, element):
            return []

        def dedupe_key(self, element, raw, headers, index):
            return raw

        def describe(self, element):
            return None, None

    fmt = named("lines", register_source_formats=lambda self, register: register("lines", Lines))
    loaded = load_config_text(
        "sources: {s: {path: /in, format: lines}}\n" + BASE, env={}, extra_plugins=[fmt]
    )
    assert loaded.registry.get("source_formats", "lines") is Lines
    with pytest.raises(
        ConfigError,
        match=r"sources\.s\.format: unknown format 'line'"
        r" \(did you mean 'lines'\?\)",
    ):
        load_config_text(
            "sources: {s: {path: /in, format: line}}\n" + BASE, env={}, extra_plugins=[fmt]
        )


def test_plugin_component_options_are_validated_by_check():
    class Strict(BaseModel):
        model_config = {"extra": "forbid"}
        level: int

    class Leveled(Component):
        Options = Strict

    plugin = named("lv", register_filters=lambda self, register: register("leveled", Leveled))
    with pytest.raises(ConfigError) as e:
        load_config_text(
            "filters: {mine: {type: leveled, levle: 3}}\n" + BASE, env={}, extra_plugins=[plugin]
        )
    assert "filters.mine.levle: unknown key (did you mean 'level'?)" in e.value.problems
    assert "filters.mine.level: required key is missing" in e.value.problems


# -- async hooks -----------------------------------------------------------------------------
async def test_async_and_sync_implementations_of_one_hook_both_run():
    seen = []

    async def a_start(self, gateway):
        seen.append(("async", gateway))

    def s_start(self, gateway):
        seen.append(("sync", gateway))

    async def a_stop(self, gateway):
        seen.append(("stopped", gateway))

    pm = make_plugin_manager(
        entry_points=False,
        extra=[named("one", startup=a_start), named("two", startup=s_start, shutdown=a_stop)],
    )
    await call_hook(pm.hook.startup, gateway="ctx")
    await call_hook(pm.hook.shutdown, gateway="ctx")
    assert sorted(seen) == [("async", "ctx"), ("stopped", "ctx"), ("sync", "ctx")]


async def test_async_filter_event_and_enrich_event_work_in_the_chain():
    async def keep_not_test(self, event, meta):
        return event.get("channel_type") != "TEST"

    async def add(self, event, meta):
        return {"async": True}

    loaded = load_config_text(
        BASE, env={}, extra_plugins=[named("asyncer", filter_event=keep_not_test, enrich_event=add)]
    )
    chain = Chain(loaded, None, _Clock())
    d = await chain.evaluate({"channel_type": "SMS"}, META)
    assert d.state == "routed" and d.targets[0].enrichment == {"async": True}
    assert (await chain.evaluate({"channel_type": "TEST"}, META)).state == "filtered"


class _Clock:
    def now(self) -> float:
        return 1602874300.0

    async def sleep(self, seconds: float) -> None:
        pass


# -- the plugins report ----------------------------------------------------------------------
def test_the_report_lists_built_ins_with_version_origin_hooks_and_components():
    text = plugins_report(load_config_text(BASE, env={}))
    assert "enrichers 0.1.0  [built-in, from callback-gateway]" in text
    assert "  hooks:          register_enrichers\n" in text
    assert "  enrichers:      error_text, fields, latency, status_text\n" in text
    assert "ordering 0.1.0  [built-in, from callback-gateway]" in text
    assert "  filters:        ordering\n" in text
    assert "  source formats: revicom\n" in text


def test_the_report_shows_config_modules_and_code_registered_plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    extra = named("inline", enrich_event=lambda self, event, meta: None)
    loaded = load_config_text(
        "plugins: [gateway_plugin_example]\n" + BASE, env={}, extra_plugins=[extra]
    )
    info = {p["name"]: p for p in plugins_info(loaded)}
    example = info["gateway_plugin_example"]
    assert (example["origin"], example["version"]) == ("config", "0.1.0")
    assert example["provides"] == {
        "filters": ["only_channels"],
        "enrichers": ["team"],
        "destinations": ["chat"],
    }
    assert example["hooks"] == [
        "delivery_finished",
        "enrich_event",
        "filter_event",
        "register_destinations",
        "register_enrichers",
        "register_filters",
        "shutdown",
        "startup",
    ]
    assert info["inline"]["origin"] == "registered"
    assert info["inline"]["hooks"] == ["enrich_event"]
    text = plugins_report(loaded)
    assert "gateway_plugin_example 0.1.0  [config]" in text
    assert "inline (no version)  [registered]" in text


# -- the example package, installed ----------------------------------------------------------
@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """The example package pip-installed (with its entry point) into a private directory.

    Not into the shared venv: its hooks would then run in every test and every gateway on
    this machine. Putting the directory on ``sys.path`` / ``PYTHONPATH`` is exactly what an
    installed package looks like to ``importlib.metadata``. A copy is built, so the source tree
    gets no build/ or egg-info litter.
    """
    work = tmp_path_factory.mktemp("example")
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return site


def test_the_installed_example_is_loaded_through_its_entry_point(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    loaded = load_config_text(BASE, env={})
    info = {p["name"]: p for p in plugins_info(loaded)}
    example = info["example"]
    assert example["origin"] == "entry point"
    assert (example["distribution"], example["version"]) == ("gateway-plugin-example", "0.1.0")
    assert "example 0.1.0  [entry point, from gateway-plugin-example]" in plugins_report(loaded)
    # Listing the module under `plugins:` as well does not register it twice.
    again = load_config_text("plugins: [gateway_plugin_example]\n" + BASE, env={})
    assert [p["name"] for p in plugins_info(again)].count("example") == 1


def test_the_example_delivery_finished_hook_writes_its_audit_line(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import gateway_plugin_example as example

    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("GATEWAY_EXAMPLE_AUDIT_LOG", str(log))
    example.delivery_finished(
        {"id": "d1", "destination": "x", "route": "r"},
        {"state": "dead", "error": "HTTP 404", "status": 404},
    )
    assert json.loads(log.read_text()) == {
        "id": "d1",
        "destination": "x",
        "route": "r",
        "state": "dead",
        "error": "HTTP 404",
    }


EXAMPLE_CONFIG = """
sources:
  revicom: {path: /callbacks/revicom}
store: sqlite:///gw.db
enrichers:
  team: {teams: {WHATSAPP: messaging-apps}, default: platform}
filters:
  apps-only: {type: only_channels, channels: [WHATSAPP, VIBER]}
destinations:
  ops-chat:
    type: chat
    url: RECEIVER/chat
    text: "{{ event.message_uuid }} {{ event.status }} {{ event.team }} final={{ event.final }}"
routes:
  - name: apps
    filter: [apps-only]
    enrich: [team]
    to: [ops-chat]
"""


@pytest.mark.slow
async def test_the_example_plugin_works_end_to_end(example_site, gateway_factory, tmp_path):
    audit = tmp_path / "audit.jsonl"
    async with Receiver() as rx:
        gw = gateway_factory(
            EXAMPLE_CONFIG.replace("RECEIVER", rx.url),
            env={"PYTHONPATH": str(example_site), "GATEWAY_EXAMPLE_AUDIT_LOG": str(audit)},
        )
        base = {
            "channel_type": "WHATSAPP",
            "callback_event": "delivered",
            "status": "delivered",
            "status_time": "2020-10-16T18:51:13Z",
        }
        body = [
            {**base, "message_uuid": "canary-1"},  # dropped by the plugin's filter_event
            {**base, "message_uuid": "sms-1", "channel_type": "SMS"},  # dropped by only_channels
            {**base, "message_uuid": "wa-1"},
        ]
        async with httpx.AsyncClient() as client:
            resp = await client.post(gw.url("/callbacks/revicom"), json=body)
        assert resp.status_code == 200, resp.text
        (req,) = await rx.wait_for(1, timeout=15)
        assert req.path == "/chat"
        assert json.loads(req.body) == {"text": "wa-1 delivered messaging-apps final=True"}
        assert req.headers["webhook-id"]
        await _eventually(lambda: audit.exists() and audit.read_text().strip())
        line = json.loads(audit.read_text().splitlines()[0])
        assert (line["destination"], line["route"], line["state"]) == (
            "ops-chat",
            "apps",
            "delivered",
        )
        time_left = time.monotonic() + 0.5
        while time.monotonic() < time_left and len(rx.requests) == 1:
            await _sleep(0.05)
        assert len(rx.requests) == 1  # the canary and the SMS were not sent


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _eventually(predicate: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await _sleep(0.05)


def test_example_package_source_is_self_contained():
    text = textwrap.dedent((EXAMPLE / "pyproject.toml").read_text())
    assert '[project.entry-points.callback_gateway]\nexample = "gateway_plugin_example"' in text


async def test_tracing_prints_the_calls_the_chain_makes(monkeypatch, capsys):
    monkeypatch.setenv("CALLBACK_GATEWAY_TRACE_PLUGINS", "1")
    tagger = named("tagger", enrich_event=lambda self, event, meta: {"team": "ops"})
    loaded = load_config_text(
        BASE.replace("{to: a}", "{name: r, to: a, enrich: status_text}"),
        env={},
        extra_plugins=[tagger],
    )
    await Chain(loaded, None, _Clock()).evaluate({"status": "sent"}, META)
    err = capsys.readouterr().err
    # pluggy's own tracer: the call with its arguments, who implements it, the result.
    assert "[plugins]   enrich_event [hook]\n      event: {'status': 'sent'}" in err
    assert "[plugins]   enrich_event -> tagger [hook]\n" in err
    assert "[plugins]   finish enrich_event --> [{'team': 'ops'}] [hook]\n" in err
    assert "[plugins] route r: enrich -> status_text (enrichers) [component]\n" in err
    assert "[plugins] route r: filter -> ordering (ordering) [component]\n" in err


def test_the_example_readme_configuration_is_valid(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    readme = (EXAMPLE / "README.md").read_text()
    (block,) = readme.split("```yaml\n")[1:]
    config = "plugins: [gateway_plugin_example]\n" + block.split("```")[0]
    loaded = load_config_text(config, env={})
    assert loaded.instances["filters"]["chat-only-apps"][0] == "only_channels"
    assert loaded.config.destinations["ops-chat"].type == "chat"


def test_the_example_package_uses_only_public_names():
    """A third-party plugin needs nothing private: the marker and the destination kit."""
    import ast

    public = {
        "gateway": {"hookimpl"},
        "gateway.destination": set(__import__("gateway.destination", fromlist=["__all__"]).__all__),
    }
    for path in (EXAMPLE / "gateway_plugin_example").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway"):
                assert node.module in public, f"{path.name}: imports {node.module}"
                for alias in node.names:
                    assert alias.name in public[node.module], f"{path.name}: {alias.name}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("gateway") for a in node.names)
