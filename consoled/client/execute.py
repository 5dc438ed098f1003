"""``consoled exec``: a new terminal for a command in a running container, attached.

The order matters: the console socket is created and the attach is opened
(with our window size) *before* the runtime starts the process, so the size
is right before the program's first byte and no output is missed.  If the
runtime fails, its message is shown and the session is removed: no stale
session, no socket file.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Final

from ..protocol import events as ev
from .attach import AttachOptions
from .conn import Client, ClientError

#: Seconds the runtime gets to start the process.
RUNTIME_TIMEOUT: Final = 60.0

AttachFn = Callable[..., int]


def runtime_argv(
    runtime: str,
    runtime_args: Sequence[str],
    socket_path: str,
    container: str,
    command: Sequence[str],
) -> list[str]:
    return [
        runtime,
        *runtime_args,
        "exec",
        "-d",
        "-t",
        "--console-socket",
        socket_path,
        container,
        *command,
    ]


def _remove(control_path: str, session: str) -> None:
    try:
        with Client(control_path) as client:
            client.call(ev.Remove(session, force=True), ev.Removed)
    except ClientError:
        pass  # already gone


def run_exec(
    control_path: str,
    *,
    container: str,
    command: Sequence[str],
    runtime: str,
    runtime_args: Sequence[str],
    options: AttachOptions,
    attach: AttachFn,
) -> int:
    """Create the exec session, start the process with the runtime, attach to it."""
    with Client(control_path) as client:
        created = client.call(
            ev.CreateSocket(container, exec_base=os.path.basename(command[0])), ev.SocketCreated
        )

    def start_process() -> int | None:
        argv = runtime_argv(runtime, runtime_args, created.path, container, command)
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=RUNTIME_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            _remove(control_path, created.session)
            print(f"consoled: cannot run {runtime}: {exc}", file=sys.stderr)
            return 1
        if proc.returncode != 0:
            _remove(control_path, created.session)
            message = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            print(
                f"consoled: {os.path.basename(runtime)} exec failed (exit {proc.returncode}): "
                f"{message or 'no message'}",
                file=sys.stderr,
            )
            return 1
        return None

    try:
        return attach(
            control_path, dataclasses.replace(options, session=created.session), start_process
        )
    except BaseException:
        _remove(control_path, created.session)
        raise
