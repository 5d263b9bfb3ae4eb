"""callback-gateway: receive messaging-API callbacks durably, route them, deliver them.

Plugin authors import one marker::

    from gateway import hookimpl
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Project name shared by pluggy and the entry-point group.
PROJECT = "callback_gateway"

hookimpl = pluggy.HookimplMarker(PROJECT)
hookspec = pluggy.HookspecMarker(PROJECT)

__all__ = ["PROJECT", "__version__", "hookimpl", "hookspec"]
