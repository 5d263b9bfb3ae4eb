"""`run` and `check`."""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from sanic import Sanic

from gateway.config import load_config
from gateway.config.load import Loaded
from gateway.logs import setup_logging

log = logging.getLogger("gateway")


def check(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    cfg = loaded.config
    print(
        f"{args.config}: OK ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations,"
        f" {len(cfg.routes)} routes)",
        file=sys.stderr,
    )
    return 0


def _app_from_file(path: str) -> Sanic:
    """Factory for Sanic worker processes (workers > 1): each loads the config itself."""
    from gateway.app import create_app

    loaded = load_config(path)
    setup_logging(loaded.config.log_format, loaded.secrets)
    return create_app(loaded)


def _multiprocess_metrics() -> None:
    """Give the worker processes a fresh shared directory for their metric files."""
    import os
    import tempfile

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="callback-gateway-metrics-")


def run(args: argparse.Namespace) -> int:
    from gateway.app import create_app

    loaded: Loaded = load_config(args.config)
    cfg = loaded.config
    setup_logging(cfg.log_format, loaded.secrets)
    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    log.info(
        "callback-gateway on http://%s:%d (%d sources, store %s)",
        host,
        port,
        len(cfg.sources),
        cfg.store.split("://")[0],
    )
    if cfg.server.workers == 1:
        # One process: SIGKILL takes down everything at once and nothing is left orphaned.
        app = create_app(loaded)
        app.run(host=host, port=port, single_process=True, access_log=False, motd=False)
        return 0
    from sanic.worker.loader import AppLoader

    _multiprocess_metrics()
    loader = AppLoader(factory=functools.partial(_app_from_file, args.config))
    app = loader.load()
    app.prepare(host=host, port=port, workers=cfg.server.workers, access_log=False, motd=False)
    Sanic.serve(primary=app, app_loader=loader)
    return 0
