"""Run the ``consoled`` command line as a subprocess against a test daemon."""

from __future__ import annotations

import subprocess
import sys

import trio

from tests.support.daemon import DaemonProcess

#: Bound on any one CLI call in the tests.
CLI_TIMEOUT = 30.0


async def cli(
    daemon: DaemonProcess, *args: str, stdin: bytes = b"", timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """``python -m consoled ARGS`` with the daemon's state dir; output captured."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "consoled", *args],
            env=daemon.env(),
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def logs(daemon: DaemonProcess, name: str) -> bytes:
    """``consoled logs NAME``'s output; the command must succeed."""
    result = await cli(daemon, "logs", name)
    assert result.returncode == 0, result.stderr
    return result.stdout
