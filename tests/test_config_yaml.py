"""Hostile configuration files (gateway/config/yaml_safe.py): alias bombs, deep nesting,
duplicate keys, empty files. `check` answers each with one line and exit 2, quickly and without
a traceback; the same rules hold for `load_config_text`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import load_config, load_config_text
from gateway.config.yaml_safe import MAX_BYTES, MAX_DEPTH, MAX_NODES, parse_yaml
from gateway.errors import ConfigError

VALID = "sources: {revicom: {path: /callbacks/revicom}}\n"


def alias_bomb(levels: int = 9, fan: int = 9) -> str:
    """The issue's reproduction: nine levels of nine aliases each (9**9 leaves expanded)."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return VALID + "\n".join(lines) + "\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, {}, name="gw.yaml")
    return info.value.problems


def check(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess[str], float]:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", "gw.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, time.monotonic() - started


def test_check_refuses_an_alias_bomb_at_once_with_one_line(tmp_path: Path) -> None:
    done, took = check(tmp_path, alias_bomb())
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert "gw.yaml:" in line and f"expands to more than {MAX_NODES:,} nodes" in line
    assert took < 20  # before: over a minute at 2.3 GB; the refusal itself takes milliseconds


def test_an_alias_bomb_is_refused_while_composing_not_after_expanding() -> None:
    started = time.monotonic()
    [line] = problems(alias_bomb())
    assert time.monotonic() - started < 1.0
    assert line.startswith("gw.yaml:7:")  # l5, the level whose expansion crosses the limit


def test_aliases_below_the_limit_still_work() -> None:
    text = VALID + "defaults: &d {attempts: 3, initial: 1s}\nretry: *d\n"
    with pytest.raises(ConfigError) as info:  # 'defaults' is not a key; the alias resolved
        load_config_text(text, {})
    assert info.value.problems == ["defaults: unknown key"]
    merged = parse_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n")
    assert merged["b"] == {"x": 1, "y": 3}  # a merged key may be overridden


def test_a_recursive_alias_is_refused() -> None:
    [line] = problems(VALID + "loop: &a [1, *a]\n")
    assert line.startswith("gw.yaml:2:")
    assert "alias *a refers to a node containing it" in line


def test_check_answers_a_10000_level_list_with_one_line(tmp_path: Path) -> None:
    for text in (
        VALID + "x: " + "[" * 10_000 + "]" * 10_000 + "\n",
        VALID + "x:\n" + "".join(" " * i + "- \n" for i in range(1, 2_000)),
    ):
        done, _ = check(tmp_path, text)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("gw.yaml:") and "nest" in line, line


def test_nesting_is_limited_below_pythons_recursion_limit() -> None:
    deep = "x: " + "{a: " * (MAX_DEPTH + 5) + "1" + "}" * (MAX_DEPTH + 5) + "\n"
    [line] = problems(deep)
    assert f"nested deeper than {MAX_DEPTH} levels" in line
    ok = "x: " + "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2) + "\n"
    assert parse_yaml(ok)["x"]


def test_a_duplicate_key_is_an_error_with_its_line_and_column(tmp_path: Path) -> None:
    text = (
        "sources:\n"
        "  revicom: {path: /callbacks/revicom}\n"
        "destinations:\n"
        "  crm: {type: file, path: a.jsonl}\n"
        "  crm: {type: file, path: b.jsonl}\n"
    )
    done, _ = check(tmp_path, text)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["gw.yaml:5:3: duplicate key 'crm' (first on line 4)"]
    [flow] = problems("sources: {a: {path: /a}, a: {path: /b}}\n")
    assert flow == "gw.yaml:1:26: duplicate key 'a' (first on line 1)"


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    for text in ("", "\n\n", "# only a comment\n", "---\n"):
        done, _ = check(tmp_path, text)
        assert done.returncode == 2, text
        assert done.stderr.splitlines() == [
            "gw.yaml: the file is empty (expected a mapping, at least 'sources:')"
        ]
    assert load_config_text("{}", {}).config.sources == {}  # an explicit empty mapping is valid


def test_a_huge_integer_is_one_line_not_a_traceback() -> None:
    [line] = problems(VALID + "x: " + "9" * 5000 + "\n")
    assert line.startswith("gw.yaml: YAML error:") and "digits" in line


def test_an_oversized_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as f:
        f.write(VALID + "pad: '")
        f.write("x" * (MAX_BYTES + 10))
        f.write("'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: larger than {MAX_BYTES // 1024 // 1024} MiB"]


def test_yaml_syntax_errors_keep_line_and_column() -> None:
    [line] = problems(VALID + "x: [1, 2\n")
    assert line.startswith("gw.yaml:") and "YAML syntax error" in line
