"""What every serving process (the HTTP server, a delivery process) does before and after it
starts: load a runnable configuration, and settle the heap once serving."""

from __future__ import annotations

import gc

from gateway.config import load_config
from gateway.config.loaded import Loaded

#: Allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 10_000


def load_runnable(path: str) -> Loaded:
    """`load_config`, then build the plugin chain once so that components whose constructors
    reject their options are reported as configuration problems too."""
    from gateway.clock import SystemClock
    from gateway.routing.chain import Chain

    loaded = load_config(path)
    Chain(loaded, None, SystemClock())
    return loaded


def settle_heap() -> None:
    """Once serving: collect, then freeze what start-up built (modules, config, plugins,
    templates) so that the cyclic garbage collector stops walking it again on every
    older-generation pass, and collect the young generation less often. Serving processes
    only (a frozen object is never collected, which a long test process would feel). Measured
    in docs/performance.md ("Third round")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
