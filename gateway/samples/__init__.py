"""The provider's sample callbacks (contract/samples), shipped with the package for `send`,
`explain` and tests."""

from __future__ import annotations

from importlib import resources

from gateway.errors import UsageError


def names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".json")
    )


def load(name: str) -> bytes:
    """The exact bytes of sample `name` (without `.json`)."""
    if name not in names():
        raise UsageError(f"no sample named {name!r}; samples: {', '.join(names())}")
    return resources.files(__name__).joinpath(f"{name}.json").read_bytes()
