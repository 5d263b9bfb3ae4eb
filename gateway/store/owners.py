"""Proof that a lease owner is dead, for stores on one machine's file system (SQLite).

Every gateway process that claims work holds an exclusive ``flock`` on a file named after its
lease owner id (``host:pid``) in a directory beside the database (``gateway.db-owners/``), for
as long as its store is open. The kernel drops the lock when the process dies, however it dies,
so a process that can take another owner's lock knows that owner is gone and that the leases
it left can be taken over at once instead of when they expire. A lock that cannot be taken
belongs to a live process (another worker, another gateway on the same file); a missing file
proves nothing (an owner from before this scheme), and those leases expire as before.

A file is removed only by whoever holds its lock (its owner at a clean stop, or the process
that found the owner dead); `OwnerLocks.hold` checks after locking that the path still names
the file it locked, so a lock on a file unlinked under it is never mistaken for a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path


def _file_name(owner: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", owner) + ".lock"


class OwnerLocks:
    """The owner-lock directory `directory`; `hold` takes this process's own lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._held: tuple[str, int] | None = None

    def hold(self, owner: str) -> bool:
        """Take `owner`'s lock for as long as this object lives (until `release`). False when
        another live process holds it (the same owner id twice: it then proves nothing)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / _file_name(owner)
        for _ in range(10):  # the file may be unlinked under us by a finder; retry on a new one
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held = (owner, fd)
                return True
            os.close(fd)
        return False

    def is_dead(self, owner: str) -> bool:
        """True when `owner` is provably dead: its lock file exists and its lock can be taken
        (the file is then removed). Never true for the owner this object holds."""
        if self._held is not None and self._held[0] == owner:
            return False
        path = self.directory / _file_name(owner)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False  # no file: nothing proven
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # held by a live process
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
        os.close(fd)
        return True

    def release(self) -> None:
        """Remove and unlock this process's own file (a clean stop)."""
        if self._held is None:
            return
        owner, fd = self._held
        self._held = None
        with contextlib.suppress(OSError):
            (self.directory / _file_name(owner)).unlink()
        os.close(fd)
