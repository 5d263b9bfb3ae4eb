"""The ``callback-gateway`` command line (also ``python -m gateway``).

Role: parse arguments, load the configuration, call the stages' public functions, print.
May import every other package; nothing imports it.
"""

from __future__ import annotations

from gateway.cli.main import main

__all__ = ["main"]
