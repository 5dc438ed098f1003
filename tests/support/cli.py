"""Run the ``consoled`` command line as a subprocess against a test daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

import trio

from tests.support.daemon import DaemonProcess

#: Bound on any one CLI call in the tests.
CLI_TIMEOUT = 30.0


async def cli(
    daemon: DaemonProcess,
    *args: str,
    stdin: bytes = b"",
    timeout: float = CLI_TIMEOUT,
    env: Mapping[str, str | None] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m consoled ARGS`` with the daemon's state dir; output captured.

    Args:
        env: more environment variables (None removes one).
    """
    environ = daemon.env()
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "consoled", *args],
            env=environ,
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def ls_json(daemon: DaemonProcess) -> list[dict[str, object]]:
    """``consoled ls --json``'s entries; the command must succeed."""
    result = await cli(daemon, "ls", "--json")
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


async def logs(daemon: DaemonProcess, name: str) -> bytes:
    """``consoled logs NAME``'s output; the command must succeed."""
    result = await cli(daemon, "logs", name)
    assert result.returncode == 0, result.stderr
    return result.stdout
