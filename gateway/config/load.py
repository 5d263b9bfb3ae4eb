"""Loading: read, parse YAML, interpolate, validate the schema, then validate what plugins define.

Every problem is collected and raised together as one `ConfigError`, one line per problem,
``key.path[index]: message``. YAML syntax errors keep their ``line:column``.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.interpolate import interpolate
from gateway.config.models import Config
from gateway.config.paths import format_loc, join_path
from gateway.config.redact import collect_secrets
from gateway.errors import ConfigError
from gateway.plugin.components import Registry, build_registry
from gateway.plugin.manager import make_plugin_manager


@dataclass
class Loaded:
    """A validated configuration with its plugins and every component's validated options."""

    config: Config
    raw: dict[str, Any]
    pm: pluggy.PluginManager
    registry: Registry
    path: Path | None = None
    source_options: dict[str, BaseModel] = field(default_factory=dict)
    destination_options: dict[str, BaseModel] = field(default_factory=dict)
    #: ``{"filters": {instance: (component, options)}, "enrichers": {...}}``
    instances: dict[str, dict[str, tuple[str, BaseModel]]] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    extra_plugins: typing.Iterable[object] = (),
) -> Loaded:
    """Load and fully validate the file at `path`; raise `ConfigError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{p}: cannot read: {e}"]) from None
    loaded = load_config_text(text, env, name=str(p), extra_plugins=extra_plugins)
    loaded.path = p
    return loaded


def load_config_text(
    text: str,
    env: Mapping[str, str] | None = None,
    *,
    name: str = "<config>",
    extra_plugins: typing.Iterable[object] = (),
) -> Loaded:
    """Like `load_config`, from YAML text (tests use this)."""
    env = os.environ if env is None else env
    try:
        tree = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise ConfigError([f"{where}: YAML syntax error: {e.problem}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{name}: YAML error: {e}"]) from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError([f"{name}: the top level must be a mapping of keys to values"])
    problems: list[str] = []
    tree = interpolate(tree, env, problems)
    config: Config | None = None
    try:
        config = Config.model_validate(tree)
    except ValidationError as e:
        problems.extend(_pydantic_problems(e, Config, tree))
    pm, registry = _plugins(tree, problems, extra_plugins)
    loaded = Loaded(config=config, raw=tree, pm=pm, registry=registry)  # type: ignore[arg-type]
    if registry is not None:
        from gateway.config.components import check_components

        check_components(tree, config, registry, loaded, problems)
    if problems or config is None:
        raise ConfigError(problems)
    loaded.secrets = collect_secrets(tree)
    return loaded


def _plugins(
    tree: dict[str, Any], problems: list[str], extra: typing.Iterable[object]
) -> tuple[Any, Registry | None]:
    modules = tree.get("plugins") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        modules = []
    try:
        pm = make_plugin_manager(modules, extra=extra)
        return pm, build_registry(pm)
    except ConfigError as e:
        problems.extend(e.problems)
        return None, None


def _pydantic_problems(
    e: ValidationError, model: type[BaseModel], tree: Any, prefix: str = ""
) -> list[str]:
    out = []
    for err in e.errors(include_url=False):
        loc = err["loc"]
        path = format_loc(loc, prefix)
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(model, loc[:-1])
            hint = suggest(str(loc[-1]), allowed)
            out.append(f"{path}: unknown key{hint}")
        elif err["type"] == "missing":
            out.append(f"{path}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            found = err.get("input")
            shown = "" if isinstance(found, dict | list) or found is None else f" (found {found!r})"
            out.append(f"{path}: {msg}{shown}")
    return out


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or a list of valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if choices and len(choices) <= 12:
        return f" (expected one of: {', '.join(choices)})"
    return ""


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by walking `loc` from `model` (best effort)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _step(tp: Any, part: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _step(typing.get_args(tp)[0], part)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                found = _step(arg, part)
                if found is not None:
                    return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(str(part))
        return f.annotation if f else None
    if origin in (dict, list):
        return typing.get_args(tp)[-1]
    return None


__all__ = ["Loaded", "allowed_keys", "join_path", "load_config", "load_config_text", "suggest"]
