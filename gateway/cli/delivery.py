"""Delivery in processes of its own: ``delivery.processes: N`` and ``run --role delivery``.

A delivery process serves no HTTP: it opens the store, the shared HTTP client, a `Router` and
a `DeliveryEngine`, routes the events the store holds and sends the deliveries (its own, woken
directly, and those another process's router queued). Several processes (and several
machines, with a shared store) may route and deliver from one store at once: each claim is
exclusive under its lease, a crashed process's claims expire and are taken by another.

With ``delivery.processes`` the serving process answers the provider and routes what it
received from memory while it keeps up (at most `gateway.runtime.SERVE_FRESH` events waiting);
what it cannot keep up with it commits unleased, and the children route it. The children
deliver everything. Splitting routing by load this way measured best on two cores
(docs/performance.md, "Issue 18, third pass"): routing only in the serving process left it the
bottleneck, routing only in the children left them the bottleneck.

Contract:

- `serve_delivery(path)` runs until SIGTERM/SIGINT, then stops the engine as the serving
  process does (tries in flight finish within `SHUTDOWN_GRACE` seconds, the rest are released)
  and returns 0. SIGHUP reloads the configuration file as the serving process does (a new
  runtime; the old engine's tries in flight finish).
- Events and deliveries created by another process cannot wake this one directly; a waker
  reads `Store.has_due_events` and `Store.next_due` per destination every `DUE_POLL` seconds
  and wakes the router and the dispatchers that have something due. Reads only: an idle
  delivery process writes nothing.
- `DeliverySupervisor` (used by ``run`` when ``delivery.processes`` > 0) starts N children
  ``run --role delivery``, starts a child again when it exits while the gateway runs, and
  stops them by PID (SIGTERM, then SIGKILL after a grace) when the gateway stops. On Linux a
  child also gets SIGTERM when the gateway dies without stopping them (SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from gateway.cli.startup import settle_heap

log = logging.getLogger("gateway.cli.delivery")

#: Seconds between looks at the store for deliveries another process queued.
DUE_POLL = 0.02
#: Seconds SIGTERM waits for tries in flight before releasing them (as the serving process).
SHUTDOWN_GRACE = 10.0
#: Seconds a supervisor waits before starting a child that exited again.
RESTART_DELAY = 1.0


def serve_delivery(path: str) -> int:
    """Run one delivery process for the configuration file at `path` (see the docstring)."""
    from gateway.cli.startup import load_runnable
    from gateway.ops.logs import setup_logging

    loaded = load_runnable(path)
    cfg = loaded.config
    setup_logging(cfg.log_format, loaded.secrets, cfg.log_level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - Sanic depends on uvloop on Linux
        runner = asyncio.run
    return int(runner(_serve(loaded)))


async def _serve(loaded: Any) -> int:
    from gateway.clock import SystemClock
    from gateway.plugin.hooks import call_hook
    from gateway.runtime import Gateway
    from gateway.store import store_from_url

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    owner = f"{socket.gethostname()}:{os.getpid()}"
    gw = Gateway(loaded, SystemClock(), owner, role="delivery")
    await gw.open(store_from_url(loaded.config.store))
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(gw)))
    await call_hook(loaded.pm.hook.startup, gateway=gw)
    settle_heap()
    log.info("delivery process %s started", owner)
    waker = asyncio.create_task(_wake_due(gw, stop), name="delivery-waker")
    try:
        await stop.wait()
    finally:
        waker.cancel()
        await gw.drain(SHUTDOWN_GRACE)
        try:
            await call_hook(gw.loaded.pm.hook.shutdown, gateway=gw)
        except Exception:
            log.exception("a shutdown hook failed")
        await gw.close()
    return 0


async def _reload(gw: Any) -> None:
    """SIGHUP: load the configuration file again, as the serving process does."""
    from gateway.errors import ConfigError
    from gateway.server.reload import apply_reload

    try:
        async with gw.reload_lock:
            await apply_reload(gw)
    except ConfigError as e:
        for problem in e.problems:
            log.error("reload refused: %s", problem)
        log.error("reload refused: the previous configuration keeps delivering")
    except Exception:
        log.exception("reload failed; the previous configuration keeps delivering")


async def _wake_due(gw: Any, stop: asyncio.Event) -> None:
    """Wake the router when the store has an event due, and each dispatcher when it has a
    delivery due for it (see `DUE_POLL`)."""
    while not stop.is_set():
        engine = gw.engine  # the current runtime's (a reload swaps it)
        now = time.time()
        router = gw.runtime.router if gw.runtime is not None else None
        if router is not None and router.idle:  # a busy router claims on its own
            try:
                due = await gw.store.has_due_events(now)
            except Exception as e:  # the router reports store trouble itself
                log.debug("delivery waker: has_due_events failed: %s", e)
                due = None
            if due is not None and due <= now:
                router.wake()
        for name, dispatcher in list(engine.dispatchers.items() if engine else ()):
            if dispatcher.wakeup.is_set():
                continue
            try:
                due = await gw.store.next_due(name)
            except Exception as e:  # the engine reports store trouble itself
                log.debug("delivery waker: next_due(%r) failed: %s", name, e)
                continue
            if due is not None and due <= now:
                engine.wake(name)
        await asyncio.sleep(DUE_POLL)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the thread that started it ends (the gateway
    killed with SIGKILL leaves no delivery process behind). Linux only; elsewhere a no-op."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DeliverySupervisor:
    """Starts and keeps `count` delivery processes for the configuration at `path`."""

    def __init__(self, path: str, count: int) -> None:
        self.path, self.count = path, count
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="delivery-supervisor", daemon=True)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gateway", "run", "-c", self.path, "--role", "delivery"]

    def start(self) -> DeliverySupervisor:
        for i in range(self.count):
            self._spawn(i)
        self._thread.start()
        return self

    def _spawn(self, i: int) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.procs[i] = subprocess.Popen(self.argv(), preexec_fn=_die_with_parent)

    def reload(self) -> None:
        """Ask every child to load the configuration file again (SIGHUP)."""
        for p in list(self.procs):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGHUP)

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            for i, p in enumerate(self.procs):
                if p is None or p.poll() is None:
                    continue
                log.error("delivery process %d exited with %s; starting it again in %gs",
                          p.pid, p.returncode, RESTART_DELAY)  # fmt: skip
                if self._stopping.wait(RESTART_DELAY):
                    return
                self._spawn(i)

    def stop(self, grace: float = SHUTDOWN_GRACE + 5.0) -> None:
        """SIGTERM every child (by PID), wait up to `grace` seconds, then SIGKILL the rest."""
        with self._lock:
            self._stopping.set()
        procs = [p for p in self.procs if p is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
