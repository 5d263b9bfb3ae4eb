"""The stores bench/run.py measures (``--store``, repeatable), each gateway on a fresh one.

- ``sqlite`` (the default, also any ``sqlite:///...``): every gateway gets its own file in its
  working directory (``sqlite:///var/gateway.db``); the two-instances phase shares one file
  by its absolute path.
- ``redis://host:port/db``: every gateway gets its own key prefix (``?prefix=bench-...:``); its
  keys are deleted afterwards (SCAN + UNLINK on that prefix only).
- ``postgresql://user@host:port/db`` (or ``postgres://``): every gateway gets a database of its
  own, created from the given one with ``CREATE DATABASE`` through ``psql`` and dropped
  afterwards.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


@dataclass
class StoreUnderTest:
    """One ``--store`` value: hands out a fresh URL per gateway and cleans up after them."""

    spec: str
    made: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        scheme = self.spec.split("://")[0]
        return {"sqlite": "sqlite", "redis": "redis", "rediss": "redis"}.get(scheme, "pg")

    @property
    def label(self) -> str:
        return self.kind

    def fresh_url(self) -> str:
        """A store nobody else uses (an empty one, unless a fixture is moved into it)."""
        return self._url(uuid.uuid4().hex[:10])

    def shared_url(self, directory: Path) -> str:
        """One store for several gateways (the two-instances phase)."""
        if self.kind == "sqlite":
            directory.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{directory / 'gateway.db'}"
        return self._url(uuid.uuid4().hex[:10])

    def _url(self, tag: str) -> str:
        if self.kind == "sqlite":
            return "sqlite:///var/gateway.db"
        parts = urlsplit(self.spec)
        if self.kind == "redis":
            query = [(k, v) for k, v in parse_qsl(parts.query) if k != "prefix"]
            prefix = f"bench-{os.getpid()}-{tag}:"
            self.made.append(prefix)
            return urlunsplit(parts._replace(query=urlencode([*query, ("prefix", prefix)])))
        name = f"bench_{os.getpid()}_{tag}"
        self._psql(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return urlunsplit(parts._replace(path="/" + name))

    def _psql(self, sql: str) -> None:
        subprocess.run(
            ["psql", self.spec, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def cleanup(self) -> None:
        """Delete what this run created in the shared servers."""
        made, self.made = self.made, []
        if self.kind == "redis" and made:
            import redis

            url = urlunsplit(urlsplit(self.spec)._replace(query=""))
            client = redis.Redis.from_url(url)
            for prefix in made:
                batch = []
                for key in client.scan_iter(match=prefix + "*", count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        client.unlink(*batch)
                        batch = []
                if batch:
                    client.unlink(*batch)
            client.close()
        elif self.kind == "pg":
            for name in made:
                self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
