"""The exceptions callback-gateway raises on purpose.

Tree::

    GatewayError                 base; never shown with a traceback
    ├── UsageError               the user asked for something impossible (exit 2)
    │   └── ConfigError          the configuration file is missing, unreadable or invalid (exit 2)
    ├── StoreError               the store cannot read or commit (exit 1; intake answers 503)
    └── PluginError              a plugin raised while handling an event (the event is held)

`GatewayError` subclasses carry a one-line message meant for a human; the CLI prints it and
exits with `exit_code`, no traceback.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: an error with a message fit to show a user as one line."""

    exit_code = 1


class UsageError(GatewayError):
    """The user asked for something impossible (bad flags, unknown sample name)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration is invalid; `problems` holds every problem, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(GatewayError):
    """The store could not complete an operation (unreachable, disk full, locked too long)."""


class PluginError(GatewayError):
    """A plugin raised; `plugin` names it so operators can see who failed."""

    def __init__(self, plugin: str, error: BaseException) -> None:
        self.plugin = plugin
        self.error = error
        super().__init__(f"plugin {plugin!r} raised {type(error).__name__}: {error}")
