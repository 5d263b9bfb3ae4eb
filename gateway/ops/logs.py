"""Logging setup: plain text or JSON lines on stderr, with secrets scrubbed from every line.

The event loop only enqueues records (`QueueHandler`); a logging thread (`_Writer`) formats
them, scrubs secrets and writes them. Formatting and the write to stderr were about half of the
request path's cost when done inline, and a slow log sink (a full pipe, journald pushing back)
would otherwise stall requests. The thread writes everything waiting in the queue with one
write and one flush, so a busy gateway makes one system call per batch of lines, not per line.
The per-request lines (`line`) reach the thread in batches at most `HANDOFF_DELAY` apart.
Records still queued are written at a normal exit; only a crash can drop the last lines (those
of the last `HANDOFF_DELAY` at most, and whatever the thread had not written yet).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from gateway.config.redact import scrub

_listener: _Writer | None = None
#: Lines written with one write() at most.
MAX_BATCH = 256
#: Seconds the event loop collects per-request lines (`line`) before handing them to the
#: logging thread in one batch. Waking the thread once per loop turn cost a few percent of a
#: busy gateway's CPU (a thread switch and a GIL hand-over each time); 20 hand-offs a second
#: cost nothing measurable, and a line still carries the time it was logged at.
HANDOFF_DELAY = 0.05


class _Seconds:
    """strftime of a whole second, remembered: consecutive records mostly share it."""

    def __init__(
        self, fmt: str, convert: Callable[[float], time.struct_time] = time.gmtime
    ) -> None:
        self.fmt, self.convert = fmt, convert
        self.second, self.text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.text = second, time.strftime(self.fmt, self.convert(second))
        return self.text


class TextFormatter(logging.Formatter):
    """``2026-11-26T17:03:03 INFO name: message``, local time like `logging.Formatter`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S", time.localtime)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._seconds(record.created)

    def line(self, created: float, level: int, name: str, message: str) -> str:
        """What `format` makes of a record without an exception, from its parts (the
        hot-path lines of `line`, without building a `logging.LogRecord`)."""
        return f"{self._seconds(created)} {logging.getLevelName(level)} {name}: {message}"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        out = self._fields(record.created, record.levelname, record.name, record.getMessage())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)

    def line(self, created: float, level: int, name: str, message: str) -> str:
        """`format` of a record without an exception, from its parts (see `TextFormatter`)."""
        fields = self._fields(created, logging.getLevelName(level), name, message)
        return json.dumps(fields, ensure_ascii=False)

    def _fields(self, created: float, levelname: str, name: str, message: str) -> dict[str, str]:
        millis = int((created - int(created)) * 1000)
        return {
            "time": f"{self._seconds(created)}.{millis:03d}Z",
            "level": levelname.lower(),
            "logger": name,
            "message": message,
        }


class ScrubbingFormatter(logging.Formatter):
    """Formats with `inner`, then masks configured secrets and URL passwords anywhere in the
    line, tracebacks included."""

    def __init__(self, inner: TextFormatter | JsonFormatter, secrets: set[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record), self.secrets)

    def line(self, created: float, level: int, name: str, message: str) -> str:
        return scrub(self.inner.line(created, level, name, message), self.secrets)


class _Enqueue(logging.handlers.QueueHandler):
    """Resolves what cannot wait (the %-arguments, a traceback's text) and enqueues the record;
    formatting and scrubbing happen on the logging thread."""

    def enqueue(self, record: logging.LogRecord) -> None:
        # Lines `line` holds back were logged before this record: hand them over first, so
        # the output keeps the order of the calls (only their own loop's thread may touch them).
        if _turn and _turn_loop is not None and asyncio._get_running_loop() is _turn_loop:
            writer = _listener
            if writer is not None:
                _hand_off(writer)
        super().enqueue(record)

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
    inner = JsonFormatter() if fmt == "json" else TextFormatter()
    _flush()
    records: queue.SimpleQueue[_Item] = queue.SimpleQueue()
    _listener = _Writer(records, ScrubbingFormatter(inner, secrets or set()), sys.stderr)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level)
    for name in ("sanic.root", "sanic.error", "sanic.access", "sanic.server", "sanic.websockets"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("sanic.access").setLevel(logging.WARNING)


def add_secrets(secrets: set[str]) -> None:
    """Scrub `secrets` too from now on (a reload may bring new ones). The set is replaced,
    not changed in place, because the logging thread may be iterating over it."""
    writer = _listener
    if writer is not None:
        writer.formatter.secrets = writer.formatter.secrets | secrets


#: What the logging thread takes: a record, a hot-path line (see `line`), or None to stop.
_Line = tuple[float, str, int, str, tuple[object, ...]]
_Item = logging.LogRecord | _Line | list[Any] | None


def line(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """``logger.log(level, msg, *args)`` for lines written once per request or delivery.

    Same level check, format and scrubbing, but the line is formatted on the logging thread,
    from its parts, without a `logging.LogRecord` (building one cost more than the rest of
    logging a line).
    The line goes to the gateway's own output only, not through other handlers or filters on
    the way. On an event loop, lines are collected and handed to the thread together at most
    `HANDOFF_DELAY` seconds after the first of them; an ordinary record logged on that loop
    meanwhile hands them over first, so the output keeps the order of the calls. Without
    `setup_logging` (tests, library use) it is an ordinary ``logger.log``.
    `args` must not change after the call (numbers and strings are what it is used with)."""
    if not logger.isEnabledFor(level):
        return
    writer = _listener
    if writer is None:
        logger.log(level, msg, *args)
        return
    item = (time.time(), logger.name, level, msg, args)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on an event loop: straight to the queue
        writer.records.put(item)
        return
    # On the event loop, lines wait and go to the logging thread together: one queue
    # hand-off (one wake-up of the logging thread, one GIL round trip) per `HANDOFF_DELAY`
    # instead of one per line. Their time is still the call's.
    global _turn_loop
    if not _turn or _turn_loop is not loop:
        if _turn:  # held by a loop that has gone (tests run several): theirs go first
            _hand_off(writer)
        _turn_loop = loop
        loop.call_later(HANDOFF_DELAY, _hand_off, writer)
    _turn.append(item)


#: Lines held back on the event loop (see `line`), and that loop. One event loop per serving
#: process: only its thread touches them.
_turn: list[_Item] = []
_turn_loop: asyncio.AbstractEventLoop | None = None


def _hand_off(writer: _Writer) -> None:
    """Give the held-back lines to the logging thread in one queue item (none: nothing)."""
    if not _turn:
        return
    batch = _turn.copy()
    _turn.clear()
    writer.records.put(batch)


class _Writer:
    """The logging thread: formats queued records and writes them in batches to `stream`."""

    def __init__(
        self,
        records: queue.SimpleQueue[_Item],
        formatter: ScrubbingFormatter,
        stream: TextIO,
    ) -> None:
        self.records, self.formatter, self.stream = records, formatter, stream
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write everything queued so far, then end the thread."""
        if _turn:  # lines still held back on the event loop
            _hand_off(self)
        self.records.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self.records.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for item in _flat(batch):
                if item is None:
                    continue
                try:
                    if isinstance(item, tuple):  # a hot-path line: no LogRecord needed
                        created, name, level, msg, args = item
                        text = self.formatter.line(
                            created, level, name, msg % args if args else msg
                        )
                    else:
                        text = self.formatter.format(item)
                    lines.append(text + "\n")
                except Exception:  # a bad record must not stop logging; say so on stderr
                    who = item[1] if isinstance(item, tuple) else item.name
                    lines.append(f"(unformattable log record from {who})\n")
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or full: nothing else to tell
                pass
            if None in batch:
                return


def _flat(batch: list[_Item]) -> list[logging.LogRecord | _Line | None]:
    """The queued items with each batch of held-back lines (a list, see `line`) in its place."""
    out: list[logging.LogRecord | _Line | None] = []
    for item in batch:
        if isinstance(item, list):
            out.extend(item)
        else:
            out.append(item)
    return out


@atexit.register
def _flush() -> None:
    """Write whatever is still queued and stop the logging thread (at exit; safe twice)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
