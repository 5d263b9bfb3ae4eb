"""The ``file`` destination: JSON Lines, one envelope per delivery, appended and flushed.

Options (``destinations.<name>``)::

    path: var/events.jsonl      # relative to the working directory; the parent is created
    fsync: false                # true: fsync after every line (slower, survives power loss)

Each line is the envelope (see `gateway.destination.payload`): ``{"id", "event_id", "source",
"route", "received_at", "event", "enrichment"}``. Lines are written with one ``write()`` on a
file opened for appending, so lines from several processes do not interleave on a local disk.
A retried delivery may appear twice (at-least-once); readers drop repeats by ``id``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway import hookimpl
from gateway.destination.base import Outcome, Services
from gateway.destination.payload import envelope_text
from gateway.store import DeliveryRecord


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    fsync: bool = False


#: The name the model is imported under (``from gateway_plugins.file import Options``).
Options = FileOptions


class FileDestination:
    """See the module docstring."""

    Options = FileOptions

    def __init__(self, name: str, options: FileOptions, services: Services) -> None:
        self.name = name
        self.options = options
        self.path = Path(options.path).expanduser()
        if not self.path.is_absolute():
            self.path = Path.cwd() / self.path
        self._file: IO[bytes] | None = None
        self._lock = asyncio.Lock()

    def _write(self, line: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        view = memoryview(line)
        while view:  # a raw write may be short (rare on regular files, but allowed)
            written = self._file.write(view)
            view = view[written or 0 :]
        if self.options.fsync:
            os.fsync(self._file.fileno())

    async def deliver(self, delivery: DeliveryRecord) -> Outcome:
        line = (envelope_text(delivery, one_line=True) + "\n").encode("utf-8")
        try:
            async with self._lock:
                if self.options.fsync:
                    await asyncio.to_thread(self._write, line)
                else:
                    self._write(line)  # an unbuffered append of one line: microseconds
        except OSError as e:
            self._close()
            return Outcome.retry(f"cannot write {self.path}: {e.strerror or e}")
        return Outcome.delivered()

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    async def close(self) -> None:
        self._close()


@hookimpl
def register_destinations(register: Any) -> None:
    register("file", FileDestination)
