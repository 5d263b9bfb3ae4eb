"""Shared fixtures: a real gateway subprocess factory and the contract samples."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import GatewayProcess

SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "contract" / "samples"
PACKAGE_SAMPLES = Path(__file__).resolve().parents[1] / "gateway" / "samples"


@pytest.fixture
def sample() -> Callable[[str], list[dict[str, Any]]]:
    """Load a contract sample (from the package copy) as parsed JSON."""
    return lambda name: json.loads((PACKAGE_SAMPLES / f"{name}.json").read_text())


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start real gateway subprocesses in `tmp_path`; all are killed at teardown."""
    started: list[GatewayProcess] = []

    def start(
        config_text: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        workdir: Path | None = None,
    ) -> GatewayProcess:
        gw = GatewayProcess(config_text, workdir or tmp_path, env, port)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.kill()
