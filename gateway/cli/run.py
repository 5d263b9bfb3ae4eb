"""`run` and `check`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sanic import Sanic

from gateway.cli.startup import load_runnable, settle_heap
from gateway.config import load_config
from gateway.config.loaded import Loaded
from gateway.errors import GatewayError
from gateway.ops.logs import setup_logging

log = logging.getLogger("gateway")


def check(args: argparse.Namespace) -> int:
    loaded = load_runnable(args.config)
    cfg = loaded.config
    print(
        f"{args.config}: OK ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations,"
        f" {len(cfg.routes)} routes)",
        file=sys.stderr,
    )
    return 0


def explain(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.cli.send import body_from
    from gateway.errors import UsageError
    from gateway.intake.body import BodyError, split_elements
    from gateway.routing.explain import explain as render

    loaded = load_config(args.config)
    sources = list(loaded.config.sources)
    source = args.source or (sources[0] if sources else None)
    if source not in loaded.config.sources:
        raise UsageError(f"--source: no source named {source!r} (sources: {', '.join(sources)})")
    try:
        elements = split_elements(body_from(args.sample, args.file))
    except BodyError as e:
        raise UsageError(f"the body would be refused with 400: {e}") from None
    print(asyncio.run(render(loaded, elements, source)), end="")
    return 0


def plugins(args: argparse.Namespace) -> int:
    from gateway.cli.plugins import plugins_report

    print(plugins_report(load_config(args.config)), end="")
    return 0


def _app_from_file(path: str, deliver: bool = True, route: bool = True) -> Sanic:
    """Factory for Sanic worker processes (workers > 1): each loads the config itself."""
    from gateway.server.app import create_app
    from gateway.server.lifeline import die_with_parent

    die_with_parent()  # a worker must not outlive the run process (no-op in the run process)
    loaded = load_config(path)
    setup_logging(loaded.config.log_format, loaded.secrets, loaded.config.log_level)
    app = create_app(loaded, deliver=deliver, route=route)
    app.register_listener(_settle_heap, "after_server_start")
    return app


async def _settle_heap(app: Sanic) -> None:
    """`settle_heap` once the server has started."""
    settle_heap()


def _multiprocess_metrics() -> None:
    """Give the worker processes a fresh shared directory for their metric files."""
    import os
    import tempfile

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="callback-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def run(args: argparse.Namespace) -> int:
    """Serve (`--role all`, the default, or `intake`), or route and deliver without HTTP
    (`--role delivery`). Without `--role` and with ``delivery.processes: N``, serve and route
    what the serving process keeps up with, and keep N ``--role delivery`` children running,
    which route the rest and deliver (see `gateway.cli.delivery`)."""
    role = getattr(args, "role", None)
    if role == "delivery":
        from gateway.cli.delivery import serve_delivery

        return serve_delivery(args.config)
    loaded: Loaded = load_runnable(args.config)
    cfg = loaded.config
    children = cfg.delivery.processes if role is None else 0
    deliver = role != "intake" and not children
    if children:
        _multiprocess_metrics()  # /metrics sums the delivery processes' counters too
    supervisor = None
    try:
        if children:
            from gateway.cli.delivery import DeliverySupervisor

            supervisor = DeliverySupervisor(args.config, children).start()
        return _serve(args, loaded, deliver, supervisor, route=not children)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _serve(
    args: argparse.Namespace, loaded: Loaded, deliver: bool, supervisor: Any, route: bool = True
) -> int:
    from gateway.server.app import create_app
    from gateway.server.limits import GuardedProtocol, raise_fd_limit

    cfg = loaded.config
    setup_logging(cfg.log_format, loaded.secrets, cfg.log_level)
    raise_fd_limit(cfg.server.max_connections)
    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    log.info(
        "callback-gateway on http://%s:%d (%d sources, store %s%s)",
        host,
        port,
        len(cfg.sources),
        cfg.store.split("://")[0],
        "" if deliver else f", delivery in {cfg.delivery.processes or 'other'} process(es)",
    )
    with PidFile(Path(cfg.server.pid_file)):
        if cfg.server.workers == 1:
            # One process: SIGKILL takes down everything at once and nothing is left orphaned.
            app = create_app(loaded, deliver=deliver, route=route)
            app.ctx.delivery_supervisor = supervisor
            app.register_listener(_settle_heap, "after_server_start")
            app.run(
                host=host,
                port=port,
                single_process=True,
                access_log=False,
                motd=False,
                protocol=GuardedProtocol,
            )
            return 0
        from sanic.worker.loader import AppLoader

        from gateway.server.lifeline import sanic_manager_dies_with_parent
        from gateway.server.reload import restart_workers_on_sighup

        _multiprocess_metrics()
        sanic_manager_dies_with_parent()
        loader = AppLoader(factory=functools.partial(_app_from_file, args.config, deliver, route))
        app = loader.load()
        app.ctx.delivery_supervisor = supervisor
        app.prepare(
            host=host,
            port=port,
            workers=cfg.server.workers,
            access_log=False,
            motd=False,
            protocol=GuardedProtocol,
        )
        restart_workers_on_sighup(app, args.config)
        Sanic.serve(primary=app, app_loader=loader)
        return 0


class PidFile:
    """Writes this process's id to `path` while the gateway runs (for `reload`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> PidFile:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"{os.getpid()}\n")
        except OSError as e:
            raise GatewayError(f"server.pid_file: cannot write {self.path}: {e.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()


def reload(args: argparse.Namespace) -> int:
    """Validate the file, then signal the running gateway (its pid file) to load it."""
    loaded = load_config(args.config)
    pid_file = Path(loaded.config.server.pid_file)
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        raise GatewayError(
            f"no running gateway found through {pid_file} (is it running from this directory?)"
        ) from None
    print(f"{args.config}: valid; asked the gateway (pid {pid}) to reload it", file=sys.stderr)
    return 0
