"""Validate configuration text in a child process with limits, before a serving process loads it.

A reload (SIGHUP, ``POST /admin/reload``) reads a file that may have been changed by someone
else. Parsing is bounded (`gateway.config.yaml_safe`), but validating a large file still takes
CPU and memory, and a serving process must neither stall nor grow while doing it. So the text
is first validated here, in ``python -m gateway.server.isolated``, a child process with
`MEMORY_LIMIT` bytes of address space, `CPU_LIMIT` seconds of CPU and `TIMEOUT` seconds of
wall time; the serving process loads the same text only once the child found it valid (and then
off its event loop, see `gateway.server.reload`).

The child reads the text on stdin and the display name from its argument; it exits 0 when the
text is valid and 2 with one JSON array of problem lines on stdout when not. The environment
(for ``${VAR}``) is inherited. Anything else (killed by a limit, a crash) is reported as one
problem line, so the caller always gets a `ConfigError` or nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from gateway.errors import ConfigError

#: Address space of the child, in bytes.
MEMORY_LIMIT = 1024 * 1024 * 1024
#: CPU seconds of the child (the kernel ends it after that even if nobody waits for it).
CPU_LIMIT = 30
#: Seconds the caller waits for the child's answer before killing it.
TIMEOUT = 30.0


def _command(name: str) -> list[str]:
    return [sys.executable, "-m", "gateway.server.isolated", name]


def _verdict(code: int | None, out: bytes, err: bytes, name: str) -> None:
    if code == 0:
        return
    if code == 2:
        try:
            problems = json.loads(out)
        except ValueError:
            problems = None
        if isinstance(problems, list) and problems and all(isinstance(p, str) for p in problems):
            raise ConfigError(problems)
    if code is None:
        raise ConfigError([f"{name}: validation took longer than {TIMEOUT:g}s; refused"])
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {code}"]
    if code < 0 or "MemoryError" in tail[0]:
        raise ConfigError(
            [
                f"{name}: validation exceeded its limits ({MEMORY_LIMIT // 2**20} MiB,"
                f" {CPU_LIMIT}s CPU); refused"
            ]
        )
    raise ConfigError([f"{name}: validation failed: {tail[0]}"])


async def check_isolated(text: str, name: str) -> None:
    """Raise `ConfigError` unless `text` is a valid configuration, judged by a limited child
    process. Cancelling the caller kills the child."""
    proc = await asyncio.create_subprocess_exec(
        *_command(name),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err, timed_out = b"", b"", False
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate(text.encode("utf-8"))
    except TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None:  # timed out, or the caller was cancelled
            proc.kill()
            await proc.wait()
    _verdict(None if timed_out else proc.returncode, out, err, name)


def check_isolated_sync(text: str, name: str) -> None:
    """`check_isolated` for code without an event loop (a signal handler of the main process)."""
    try:
        done = subprocess.run(
            _command(name),
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _verdict(None, b"", b"", name)
        return
    _verdict(done.returncode, done.stdout, done.stderr, name)


def _child(name: str) -> int:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT, CPU_LIMIT))
    from gateway.clock import SystemClock
    from gateway.config.load import load_config_text
    from gateway.config.yaml_safe import MAX_BYTES
    from gateway.routing.chain import Chain

    data = sys.stdin.buffer.read(MAX_BYTES * 4 + 1)
    try:
        loaded = load_config_text(data.decode("utf-8"), name=name)
        Chain(loaded, None, SystemClock())  # components that reject their options fail here
    except ConfigError as e:
        sys.stdout.write(json.dumps(e.problems))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1] if len(sys.argv) > 1 else "<config>"))
