"""Configuration: YAML in, a validated `Config` out, every problem reported at once.

`load_config(path, env)` is the one entry point; see `docs/configuration.md`.
"""

from gateway.config.load import load_config, load_config_text
from gateway.config.models import (
    Config,
    DestinationConfig,
    RetryConfig,
    RouteConfig,
    SourceConfig,
)
from gateway.config.redact import redact

__all__ = [
    "Config",
    "DestinationConfig",
    "RetryConfig",
    "RouteConfig",
    "SourceConfig",
    "load_config",
    "load_config_text",
    "redact",
]
