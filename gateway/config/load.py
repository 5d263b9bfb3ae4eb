"""Loading: read, parse YAML, interpolate, validate the schema, then validate what plugins define.

Every problem is collected and raised together as one `ConfigError`, one line per problem,
``key.path[index]: message``. YAML errors keep their ``line:column``; the YAML itself is parsed
within limits (size, expanded aliases, depth; no duplicate keys, not empty): see
`gateway.config.yaml_safe`.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.components import check_components
from gateway.config.interpolate import interpolate
from gateway.config.loaded import Loaded
from gateway.config.models import Config
from gateway.config.paths import join_path
from gateway.config.problems import allowed_keys, pydantic_problems, suggest
from gateway.config.redact import collect_secrets
from gateway.config.yaml_safe import MAX_BYTES, parse_yaml
from gateway.errors import ConfigError
from gateway.plugin.components import Registry, build_registry
from gateway.plugin.manager import make_plugin_manager


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    extra_plugins: typing.Iterable[object] = (),
) -> Loaded:
    """Load and fully validate the file at `path`; raise `ConfigError` listing every problem."""
    p = Path(path)
    text = read_config_text(p)
    loaded = load_config_text(text, env, name=str(p), extra_plugins=extra_plugins)
    loaded.path = p
    return loaded


def read_config_text(path: Path) -> str:
    """The file's text; at most `MAX_BYTES` are read (the path may name a device or a huge
    file). `ConfigError` when it cannot be read, is larger, or is not UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: cannot read: {e}"]) from None


def load_config_text(
    text: str,
    env: Mapping[str, str] | None = None,
    *,
    name: str = "<config>",
    extra_plugins: typing.Iterable[object] = (),
) -> Loaded:
    """Like `load_config`, from YAML text (tests use this)."""
    env = os.environ if env is None else env
    tree = parse_yaml(text, name)
    if not isinstance(tree, dict):
        raise ConfigError([f"{name}: the top level must be a mapping of keys to values"])
    problems: list[str] = []
    tree = interpolate(tree, env, problems)
    config: Config | None = None
    try:
        config = Config.model_validate(tree)
    except ValidationError as e:
        problems.extend(pydantic_problems(e, Config, tree))
    pm, registry = _plugins(tree, problems, extra_plugins)
    loaded = Loaded(config=config, pm=pm, registry=registry)  # type: ignore[arg-type]
    if registry is not None:
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


__all__ = [
    "Loaded",
    "allowed_keys",
    "join_path",
    "load_config",
    "load_config_text",
    "read_config_text",
    "suggest",
]
