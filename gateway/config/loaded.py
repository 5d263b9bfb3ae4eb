"""`Loaded`: a validated configuration with its plugins and every component's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pluggy
from pydantic import BaseModel

from gateway.config.models import Config
from gateway.plugin.components import Registry


@dataclass
class Loaded:
    """A validated configuration with its plugins and every component's validated options."""

    config: Config
    pm: pluggy.PluginManager
    registry: Registry
    path: Path | None = None
    source_options: dict[str, BaseModel] = field(default_factory=dict)
    destination_options: dict[str, BaseModel] = field(default_factory=dict)
    #: ``{"filters": {instance: (component, options)}, "enrichers": {...}}``
    instances: dict[str, dict[str, tuple[str, BaseModel]]] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
