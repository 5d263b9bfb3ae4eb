"""How steady is this disk's fsync? The SQLite store acknowledges a callback only after its
group commit's WAL is synced, so every stall of ``fdatasync`` is a stall of every request in
flight: this is the floor under the intake ack p99.

    python bench/fsync_probe.py [DIR] [--seconds 10]

Writes into DIR (default: the current directory, i.e. the disk the store would use) and
measures, for `--seconds` each:

- ``alone``: overwrite 64 KiB of a small file and ``fdatasync`` it, every 2 ms (a WAL under
  steady intake);
- ``checkpointing``: the same while another thread writes 1,000 pages of 4 KiB to a second
  file and fsyncs it every 0.25 s (what SQLite's checkpoints do to the database file).

Prints p50/p90/p99/max and how many syncs took over 10 ms. Its two files are removed at the
end, also on errors; at most about 400 MB is written to the second one.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

PAGE = 4096
WAL_WRITE = 64 * 1024
CHECKPOINT_PAGES = 1000
MAX_DB_BYTES = 400 * 1024 * 1024


def _checkpoints(path: Path, stop: threading.Event) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        page = os.urandom(PAGE)
        offset = 0
        while not stop.is_set():
            for _ in range(CHECKPOINT_PAGES):
                os.pwrite(fd, page, offset)
                offset = offset + PAGE if offset + PAGE < MAX_DB_BYTES else 0
            os.fsync(fd)
            stop.wait(0.25)
    finally:
        os.close(fd)


def measure(directory: Path, seconds: float, checkpointing: bool) -> list[float]:
    """Milliseconds of every ``fdatasync`` of the WAL-like file over `seconds`."""
    wal, db = directory / "fsync-probe.wal", directory / "fsync-probe.db"
    stop = threading.Event()
    writer = threading.Thread(target=_checkpoints, args=(db, stop), daemon=True)
    fd = os.open(wal, os.O_RDWR | os.O_CREAT, 0o644)
    took: list[float] = []
    try:
        if checkpointing:
            writer.start()
        block = os.urandom(WAL_WRITE)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            os.pwrite(fd, block, (i % 64) * WAL_WRITE)
            i += 1
            started = time.perf_counter()
            os.fdatasync(fd)
            took.append((time.perf_counter() - started) * 1000)
            time.sleep(0.002)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        os.close(fd)
        for path in (wal, db):
            path.unlink(missing_ok=True)
    return took


def describe(name: str, took: list[float]) -> str:
    took = sorted(took)

    def q(p: float) -> float:
        return took[min(len(took) - 1, int(p * len(took)))]

    slow = sum(t > 10 for t in took)
    return (
        f"{name:<14} {len(took):>6} fdatasyncs  p50 {q(0.5):6.2f}  p90 {q(0.9):6.2f}"
        f"  p99 {q(0.99):6.2f}  max {took[-1]:7.1f} ms  over 10 ms: {slow}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=".", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    for name, checkpointing in (("alone", False), ("checkpointing", True)):
        print(describe(name, measure(args.directory, args.seconds, checkpointing)), flush=True)


if __name__ == "__main__":
    main()
