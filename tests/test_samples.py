"""The samples shipped in the package are the contract's samples, byte for byte."""

from __future__ import annotations

import pytest
from conftest import PACKAGE_SAMPLES, SHARED_SAMPLES

from gateway import samples


def test_the_package_ships_every_sample_and_send_can_load_them() -> None:
    names = samples.names()
    assert {"delivered", "delivered-undelivered", "batch-mixed", "inbound", "price"} <= set(names)
    for name in names:
        assert samples.load(name) == (PACKAGE_SAMPLES / f"{name}.json").read_bytes()


@pytest.mark.skipif(not SHARED_SAMPLES.is_dir(), reason="no contract folder beside the repo")
def test_packaged_samples_equal_the_contract_samples() -> None:
    contract = {p.name: p.read_bytes() for p in SHARED_SAMPLES.glob("*.json")}
    packaged = {p.name: p.read_bytes() for p in PACKAGE_SAMPLES.glob("*.json")}
    assert packaged == contract
