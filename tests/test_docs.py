"""docs/plugins.md stays in step with the plugin API: every hook documented with its exact
signature, every hook exercised by a test, every built-in component described."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import gateway.hookspecs
from gateway.config import load_config_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "plugins.md").read_text()
TESTS = Path(__file__).resolve().parent


def hookspecs() -> list[tuple[str, inspect.Signature]]:
    return [
        (name, inspect.signature(fn))
        for name, fn in inspect.getmembers(gateway.hookspecs, inspect.isfunction)
        if fn.__module__ == gateway.hookspecs.__name__
    ]


HOOKS = [name for name, _ in hookspecs()]


def test_there_are_hooks_to_check():
    assert {"enrich_event", "filter_event", "register_filters", "startup"} <= set(HOOKS)


@pytest.mark.parametrize(("name", "sig"), hookspecs(), ids=HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(name, sig):
    params = ", ".join(sig.parameters)
    assert f"### `{name}({params})`" in DOCS
    typed = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    assert f"def {name}({typed}) -> {sig.return_annotation}:" in DOCS


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_exercised_by_a_test(name):
    users = [
        p.name
        for p in TESTS.glob("test_*.py")
        if p.name != Path(__file__).name and re.search(rf"\b{name}\b", p.read_text())
    ]
    assert users, f"no test uses the hook {name!r}"


def test_every_hook_has_a_docstring_with_its_contract():
    for name, fn in inspect.getmembers(gateway.hookspecs, inspect.isfunction):
        if fn.__module__ == gateway.hookspecs.__name__:
            assert fn.__doc__ and len(fn.__doc__.strip()) > 40, name


def test_every_built_in_filter_and_enricher_is_described():
    registry = load_config_text("{}", env={}).registry
    for kind in ("filters", "enrichers"):
        for name, reg in registry.kinds[kind].items():
            if reg.plugin in ("enrichers", "ordering"):
                assert f"`{name}`" in DOCS, name


def test_the_essentials_of_writing_a_plugin_are_there():
    for needle in (
        "from gateway import hookimpl",
        "[project.entry-points.callback_gateway]",
        "plugins: [",
        "CALLBACK_GATEWAY_TRACE_PLUGINS",
        "class Options(BaseModel)",
        "async def",
        "ordering: false",
        "examples/gateway-plugin-example",
    ):
        assert needle in DOCS, needle


def test_python_examples_in_the_docs_are_valid_python():
    blocks = re.findall(r"```python\n(.*?)```", DOCS, re.S)
    assert len(blocks) >= len(HOOKS)
    for block in blocks:
        source = block + ("    ...\n" if block.rstrip().endswith(":") else "")
        compile(source, "docs/plugins.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_match_operators_in_the_docs_are_the_implemented_ones():
    from gateway.conditions.match import OPERATORS

    for op in OPERATORS:
        assert f"`{op}`" in DOCS, op
