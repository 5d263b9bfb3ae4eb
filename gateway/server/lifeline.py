"""Child processes of a multi-worker gateway die with the process that started them.

With ``server.workers > 1`` the ``run`` process starts Sanic's worker processes and a
multiprocessing manager process (Sanic keeps the workers' state in it). When the ``run`` process
dies without stopping them (SIGKILL, an out-of-memory kill, a crash), they would otherwise live
on as orphans: workers still listening on the port and claiming work beside the gateway that a
supervisor starts next. Each child therefore asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``)
to be sent SIGTERM when its parent exits: a worker then shuts down as on a normal SIGTERM
(in-flight work finished or released), and the manager process exits.

Linux only; elsewhere the functions do nothing (run the gateway under a supervisor that stops
the whole process group, as systemd does).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any

log = logging.getLogger("gateway")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a process started by `multiprocessing`: be sent `sig` when the parent exits.

    If the parent is already gone when this runs (it died while the child was starting), the
    child exits at once with status 1. Does nothing in a process that `multiprocessing` did not
    start, or off Linux."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)


def sanic_manager_dies_with_parent() -> None:
    """Make the multiprocessing manager that ``Sanic.serve`` starts call `die_with_parent`.

    Sanic 25.12 creates it with ``multiprocessing.Manager()``, imported into
    ``sanic.mixins.startup``; this replaces that name with an equivalent that starts the same
    `SyncManager` with `die_with_parent` as its initializer. Call in the main process before
    ``Sanic.serve``."""
    from multiprocessing.managers import SyncManager

    import sanic.mixins.startup as startup

    def manager() -> Any:
        started = SyncManager(ctx=multiprocessing.get_context())
        started.start(initializer=die_with_parent)
        return started

    startup.Manager = manager  # type: ignore[attr-defined]
