"""Logging setup: plain text or JSON lines on stderr, with secrets scrubbed from every line.

The event loop only enqueues records (`QueueHandler`); a logging thread (`QueueListener`)
formats them, scrubs secrets and writes them. Formatting and the write to stderr were about half
of the request path's cost when done inline, and a slow log sink (a full pipe, journald pushing
back) would otherwise stall requests. Records still queued are written at a normal exit; only a
crash can drop the last few lines.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time

from gateway.config.redact import scrub

_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class ScrubbingFormatter(logging.Formatter):
    """Formats with `inner`, then masks configured secrets and URL passwords anywhere in the
    line, tracebacks included."""

    def __init__(self, inner: logging.Formatter, secrets: set[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record), self.secrets)


class _Enqueue(logging.handlers.QueueHandler):
    """Resolves what cannot wait (the %-arguments, a traceback's text) and enqueues the record;
    formatting and scrubbing happen on the logging thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def setup_logging(
    fmt: str = "text", secrets: set[str] | None = None, level: str | int = logging.INFO
) -> None:
    """Route the gateway's and Sanic's loggers through one queue to stderr at `level`."""
    global _listener
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    # No format here shows the caller's file/line, thread or process name, so records need
    # not collect them: the logging HOWTO's "Optimization" switches. Collecting the caller
    # walks the stack on every record, on the event loop's thread.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    inner: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(ScrubbingFormatter(inner, secrets or set()))
    _flush()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, output)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level)
    for name in ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("sanic.access").setLevel(logging.WARNING)


@atexit.register
def _flush() -> None:
    """Write whatever is still queued and stop the logging thread (at exit; safe twice)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
