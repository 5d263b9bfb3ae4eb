"""Configuration reload (SIGHUP, ``callback-gateway reload``, ``POST /admin/reload``).

The file is validated first; a file with problems is refused, every problem is logged, and the
old configuration keeps serving. A valid file builds a new `gateway.runtime.Runtime` (sources,
chain, router, delivery engine, alarms) which starts and becomes current in one step (no request
is dropped: intake hands events to whichever runtime is current when they commit); then the old
one stops, its delivery engine finishing in-flight attempts. ``store`` and ``server`` (address,
workers) take effect on the next restart; the log says so.

The file is read once (`gateway.config.load.read_config_text`) and validated first in a child
process with memory, CPU and time limits (`gateway.server.isolated`); only a text the child
found valid is loaded here, in a thread, so neither a hostile file nor a large one stalls the
serving loop (``/healthz`` keeps answering, SIGTERM keeps working) or grows this process.

With several workers (``server.workers > 1``) the main process validates the file the same way
and asks Sanic to restart the workers one by one, each loading the file anew (no downtime).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config.load import load_config_text, read_config_text
from gateway.errors import ConfigError, GatewayError
from gateway.ops.logs import add_secrets
from gateway.server.isolated import check_isolated, check_isolated_sync

if TYPE_CHECKING:
    from sanic import Sanic

    from gateway.runtime import Gateway

log = logging.getLogger("gateway.server.reload")


async def reload_gateway(app: Sanic) -> None:
    """Validate and apply the configuration file; raise `ConfigError` (nothing changed) when
    it has problems."""
    gw: Gateway = app.ctx.gateway
    # Two SIGHUPs close together must not interleave (one would leave an old runtime running).
    async with gw.reload_lock:
        await apply_reload(gw)
    if app.ctx.delivery_supervisor is not None:  # delivery processes reload too
        app.ctx.delivery_supervisor.reload()


async def apply_reload(gw: Gateway) -> None:
    """Load `gw`'s configuration file again and swap its runtime (the caller holds
    `gw.reload_lock`); `ConfigError` when it has problems (nothing changed)."""
    if gw.loaded.path is None:
        raise ConfigError(["reload: this gateway was not started from a file"])
    path = gw.loaded.path
    text = read_config_text(path)
    await check_isolated(text, str(path))
    new = await asyncio.to_thread(load_config_text, text, name=str(path))
    new.path = path
    add_secrets(new.secrets)  # before anything of the new configuration can log
    old = gw.config
    for key in ("store", "server"):
        if getattr(new.config, key) != getattr(old, key):
            log.warning("reload: %r changed; it takes effect on the next restart", key)
    new.config = new.config.model_copy(update={"store": old.store, "server": old.server})
    try:
        await gw.swap(new)  # components that reject their options fail here; nothing changes
    except GatewayError:
        raise
    except Exception as e:
        raise ConfigError([f"reload: {type(e).__name__}: {e}"]) from e
    cfg = new.config
    log.info(
        "reload: configuration loaded (%d sources, %d destinations, %d routes)",
        len(cfg.sources),
        len(cfg.destinations),
        len(cfg.routes),
    )


async def reload_logged(app: Sanic) -> None:
    """`reload_gateway` for signal handlers: problems are logged, never raised."""
    try:
        await reload_gateway(app)
    except ConfigError as e:
        for problem in e.problems:
            log.error("reload refused: %s", problem)
        log.error("reload refused: the previous configuration keeps serving")
    except Exception:
        log.exception("reload failed; the previous configuration keeps serving")


def restart_workers_on_sighup(app: Sanic, path: str) -> None:
    """Main process of a multi-worker server: SIGHUP validates `path`, then restarts workers."""
    import signal

    from sanic.worker.constants import RestartOrder

    def on_hup(signum: int, frame: object) -> None:
        try:
            check_isolated_sync(read_config_text(Path(path)), path)
        except ConfigError as e:
            for problem in e.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the workers keep the previous configuration")
            return
        log.info("reload: restarting workers with the new configuration")
        app.manager.restart(restart_order=RestartOrder.STARTUP_FIRST)
        if getattr(app.ctx, "delivery_supervisor", None) is not None:
            app.ctx.delivery_supervisor.reload()

    signal.signal(signal.SIGHUP, on_hup)
