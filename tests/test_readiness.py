"""`GET /readyz` follows whether the store can commit (the disk-full runbook relies on it).

The store lives on a real, small tmpfs (needs root, as in CI; skipped elsewhere) that a test
fills up: intake answers 503 and so does readiness, until space is freed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from e2e_helpers import event
from gateway_process import GatewayProcess

CONFIG = """
server: {{host: 127.0.0.1}}
store: sqlite:///{db}
sources:
  revicom:
    path: /callbacks/revicom
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    # Unbuffered, and the suppress outermost: a buffered file that ends a partial write raises
    # ENOSPC again when it is closed (whenever the free space is not a multiple of the chunk).
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 65536)


def post(gw: GatewayProcess) -> httpx.Response:
    return httpx.post(
        gw.url("/callbacks/revicom"),
        content=json.dumps([event()]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )


def test_readiness_fails_while_the_store_cannot_commit_and_recovers_with_space(
    small_disk: Path, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gw = gateway_factory(CONFIG.format(db=small_disk / "gateway.db"))
    try:
        assert post(gw).status_code == 200
        fill(small_disk / "filler")
        codes = []
        for _ in range(50):  # the WAL may still have room for a few; never unbounded
            codes.append(post(gw).status_code)
            if codes[-1] == 503:
                break
        assert codes[-1] == 503, codes

        ready = httpx.get(f"{gw.base}/readyz", timeout=10)
        assert ready.status_code == 503
        assert "disk is full" in ready.json()["detail"]
        assert httpx.get(f"{gw.base}/healthz", timeout=10).status_code == 200

        (small_disk / "filler").unlink()
        assert httpx.get(f"{gw.base}/readyz", timeout=10).status_code == 200
        assert post(gw).status_code == 200
    finally:
        gw.kill()  # before the file system goes
