"""Configuration reload (SIGHUP, ``callback-gateway reload``, ``POST /admin/reload``).

The file is validated first; a file with problems is refused, every problem is logged, and the
old configuration keeps serving. A valid file replaces sources, routes, plugins' options and
destinations in place: intake switches to the new source table in one step (no request is
dropped), the router takes the new chain for the next event, and a new delivery engine starts
before the old one finishes its in-flight attempts. ``store`` and ``server`` (address, workers)
take effect on the next restart; the log says so.

With several workers (``server.workers > 1``) the main process validates the file and asks Sanic
to restart the workers one by one, each loading the file anew (no downtime).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.config import load_config
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from sanic import Sanic

    from gateway.server.app import GatewayContext

log = logging.getLogger("gateway.server.reload")


async def reload_gateway(app: Sanic) -> None:
    """Validate and apply the configuration file; raise `ConfigError` (nothing changed) when
    it has problems."""
    ctx: GatewayContext = app.ctx.gateway
    # Two SIGHUPs close together must not interleave (one would leave an old engine running).
    async with ctx.reload_lock:
        await _reload(ctx)


async def _reload(ctx: GatewayContext) -> None:
    from gateway.ops.silence import SilenceWatcher
    from gateway.routing.chain import Chain
    from gateway.server.app import make_engine

    if ctx.loaded.path is None:
        raise ConfigError(["reload: this gateway was not started from a file"])
    new = load_config(ctx.loaded.path)
    chain = Chain(new, ctx.store, ctx.clock)  # components that reject options fail here
    old = ctx.loaded.config
    for key in ("store", "server"):
        if getattr(new.config, key) != getattr(old, key):
            log.warning("reload: %r changed; it takes effect on the next restart", key)
    new.config = new.config.model_copy(update={"store": old.store, "server": old.server})
    ctx.loaded = new
    ctx.build_endpoints()
    if ctx.background and ctx.store is not None:
        ctx.router.loaded = new
        ctx.router.chain = chain
        previous = ctx.engine
        ctx.engine = make_engine(ctx)
        await ctx.engine.start()
        await previous.stop(grace=30.0)
        ctx.housekeeper.retention = new.config.retention
        await ctx.silence.stop()
        expect = {n: s.expect_within for n, s in new.config.sources.items() if s.expect_within}
        ctx.silence = SilenceWatcher(ctx.store, ctx.clock, expect)
        await ctx.silence.start()
        ctx.router.wake()
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
            load_config(path)
        except ConfigError as e:
            for problem in e.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the workers keep the previous configuration")
            return
        log.info("reload: restarting workers with the new configuration")
        app.manager.restart(restart_order=RestartOrder.STARTUP_FIRST)

    signal.signal(signal.SIGHUP, on_hup)
