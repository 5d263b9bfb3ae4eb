"""The `callback-gateway` command (also `python -m gateway`).

Exit codes: 0 success, 1 runtime failure, 2 invalid usage or configuration. Errors a user
causes print one line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError, GatewayError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callback-gateway",
        description="Receive messaging-API callbacks durably, route them, deliver them.",
    )
    p.add_argument("--version", action="version", version=f"callback-gateway {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help: str, config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        if config:
            sp.add_argument(
                "-c",
                "--config",
                required=True,
                metavar="FILE",
                help="the gateway's YAML configuration",
            )
        return sp

    run = verb("run", "serve in the foreground until SIGTERM/SIGINT")
    run.add_argument("--host", help="override server.host")
    run.add_argument("--port", type=int, help="override server.port")
    run.add_argument(
        "--role",
        choices=["all", "intake", "delivery"],
        help="all: serve and deliver; intake: serve and route, deliver nothing; delivery:"
        " route and deliver, no HTTP (default: all, or with delivery.processes: serve, and"
        " children deliver)",
    )
    verb("check", "validate the configuration; exit 0 when valid, 2 with every problem")
    verb("reload", "validate, then make the running gateway load the file (as SIGHUP does)")

    send = verb("send", "post sample callbacks (or a file) to a gateway URL", config=False)
    send.add_argument(
        "url", nargs="?", help="for example http://user:pass@127.0.0.1:8080/callbacks/revicom"
    )
    what = send.add_mutually_exclusive_group()
    what.add_argument("--sample", help="a sample name (see --list-samples); default: delivered")
    what.add_argument("--file", help="a JSON file to post as the body")
    what.add_argument("--list-samples", action="store_true", help="list the sample names")

    dl = sub.add_parser("deliveries", help="list or show deliveries").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    lst = dl.add_parser("list", help="pending, in-flight, delivered and dead deliveries")
    lst.add_argument("-c", "--config", required=True, metavar="FILE")
    lst.add_argument("--state", choices=["pending", "in_flight", "delivered", "dead"])
    lst.add_argument("--destination")
    lst.add_argument("--message-uuid")
    lst.add_argument("--since", help="a time (ISO 8601) or an age like 1h")
    lst.add_argument("--limit", type=int, default=1000)
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    show = dl.add_parser("show", help="one delivery with its attempt history")
    show.add_argument("-c", "--config", required=True, metavar="FILE")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")

    rp = verb("replay", "put deliveries back in the queue, or re-run quarantined events")
    rp.add_argument("ids", nargs="*", metavar="ID")
    rp.add_argument("--state", choices=["dead", "delivered"])
    rp.add_argument("--destination")
    rp.add_argument("--since", help="a time (ISO 8601) or an age like 1h")
    rp.add_argument(
        "--quarantined",
        action="store_true",
        help="run quarantined events (all, or the given ids) through today's chain",
    )

    ex = verb("explain", "dry run: matching routes, enrichments, filter decisions, payloads")
    exw = ex.add_mutually_exclusive_group(required=True)
    exw.add_argument("--sample", help="a sample name (see send --list-samples)")
    exw.add_argument("--file", help="a JSON file holding a callback body")
    ex.add_argument("--source", help="the source the body arrives at (default: the first one)")
    verb("plugins", "loaded plugins: name, version, origin, hooks and components")

    ds = sub.add_parser("destinations", help="list, pause or resume destinations")
    dsa = ds.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("list", "each destination with its queue and pause state"),
        ("pause", "stop sending to a destination (durably) until resumed"),
        ("resume", "send to a paused destination again"),
    ):
        a = dsa.add_parser(action, help=text)
        a.add_argument("-c", "--config", required=True, metavar="FILE")
        if action != "list":
            a.add_argument("name")
        if action == "pause":
            a.add_argument("--reason", default="paused by an operator")

    q = sub.add_parser("quarantine", help="events held at intake as invalid").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    ql = q.add_parser("list", help="quarantined events with their reasons")
    ql.add_argument("-c", "--config", required=True, metavar="FILE")
    ql.add_argument("--json", action="store_true")
    ql.add_argument("--limit", type=int, default=1000)

    pg = verb("purge", "run one retention pass now (safe while the gateway runs)")
    pg.add_argument("--json", action="store_true", help="print one JSON object of counts")
    return p


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    from gateway.cli import admin as cli_inspect
    from gateway.cli import purge as cli_purge
    from gateway.cli import run as cli_run
    from gateway.cli import send as cli_send

    return {
        "run": cli_run.run,
        "check": cli_run.check,
        "reload": cli_run.reload,
        "send": cli_send.run_send,
        "deliveries": cli_inspect.deliveries,
        "replay": cli_inspect.replay,
        "quarantine": cli_inspect.quarantine,
        "destinations": cli_inspect.destinations,
        "explain": cli_run.explain,
        "plugins": cli_run.plugins,
        "purge": cli_purge.purge,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "send" and args.list_samples:
        from gateway import samples

        print("\n".join(samples.names()))
        return 0
    try:
        return _handlers()[args.verb](args)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return e.exit_code
    except GatewayError as e:
        print(f"callback-gateway: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
