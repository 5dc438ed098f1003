"""``consoled exec``: a new terminal for a command in a running container, attached.

The order matters: the console socket is created and the attach is opened
(with our window size) *before* the runtime starts the process, so the size
is right before the program's first byte and no output is missed.  If the
runtime fails, its message is shown and the session is removed, log files
and all: nothing is left behind.

The exit status is the command's, as ``docker exec`` returns it: its code,
128 + N if signal N killed it, 127 if the runtime could not find the
command, 126 if it could not run it, 125 if the runtime failed otherwise.
It is exact: this process is a child subreaper (as conmon is for its
container), so once the runtime has exited, the command is its child, and
it reaps it itself (the runtime's ``--pid-file`` names it).  Once the
command has ended and its status is known here, the session is removed,
log files and all (``--keep`` keeps it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..frozen import Frozen, frozen, replace
from ..protocol import events as ev
from .attach import Attachment, AttachOptions
from .conn import Client, ClientError
from .container import ContainerError, ExecUser, container_state, runtime_message

#: Seconds the runtime gets to start the process.
RUNTIME_TIMEOUT: Final = 60.0
#: Seconds to wait, once the session ended, for the command to be ours to reap.
REAP_WAIT: Final = 1.0
#: Seconds a failed exec's session gets to end, so that what it printed can be read.
OUTPUT_WAIT: Final = 5.0
PR_SET_CHILD_SUBREAPER: Final = 36
_ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: As docker exec: the command was not found, could not be run, or the runtime failed.
EXIT_NOT_FOUND: Final = 127
EXIT_CANNOT_RUN: Final = 126
EXIT_RUNTIME_FAILED: Final = 125


def runtime_failure_status(message: str) -> int:
    """docker's exit status for a runtime that could not start the command."""
    text = message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return EXIT_NOT_FOUND
    if "permission denied" in text or "exec format error" in text:
        return EXIT_CANNOT_RUN
    return EXIT_RUNTIME_FAILED


AttachFn = Callable[..., Attachment]


@frozen
class Runtime(Frozen):
    """The OCI runtime and how ``consoled exec`` runs the command with it.

    Attributes:
        path: runc or crun (or a wrapper that runs one).
        root: its global ``--root`` (its state directory), None for its default.
        global_args: more global options, before the subcommand.
        user: who the command runs as, resolved (see :mod:`.container`).
        env: ``NAME=VALUE`` for the command's environment.
        workdir: the command's working directory in the container.
        process: the container's own process (its bundle's), when ``user``
            has groups to give: the command is described to the runtime as
            that process with its own arguments, user, groups, environment
            and working directory (``--process``), as runc does itself from
            the same process, because crun has no option for the groups.
    """

    path: str
    root: str | None = None
    global_args: tuple[str, ...] = ()
    user: ExecUser | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    process: Mapping[str, Any] | None = None

    @property
    def prefix(self) -> list[str]:
        """The runtime with its global options: ``runc --root DIR``."""
        return [self.path, *(["--root", self.root] if self.root else []), *self.global_args]

    def exec_argv(
        self,
        socket_path: str,
        container: str,
        command: Sequence[str],
        *,
        pid_file: str | None = None,
        process_file: str | None = None,
    ) -> list[str]:
        """``RUNTIME exec -d -t --console-socket SOCK [options] ID CMD...``, for runc and crun.

        With ``process_file`` (where :meth:`process_spec` was written), the
        command and its options are in that file.
        """
        options = ["--console-socket", socket_path]
        if pid_file:
            options += ["--pid-file", pid_file]
        if process_file:
            return [*self.prefix, "exec", "-d", *options, "--process", process_file, container]
        if self.user:
            options += ["--user", self.user.spec]
        for variable in self.env:
            options += ["--env", variable]
        if self.workdir:
            options += ["--cwd", self.workdir]
        return [*self.prefix, "exec", "-d", "-t", *options, container, *command]

    def process_spec(self, command: Sequence[str]) -> dict[str, Any] | None:
        """The command as an OCI process, for ``--process`` (None: options will do)."""
        if self.process is None or self.user is None:
            return None
        spec = dict(self.process)
        spec["args"] = list(command)
        spec["terminal"] = True
        user = dict(spec.get("user") or {})
        user.update(uid=self.user.uid, gid=self.user.gid, additionalGids=list(self.user.groups))
        spec["user"] = user
        if self.env:
            spec["env"] = list(self.env)
        if self.workdir:
            spec["cwd"] = self.workdir
        return spec


def become_subreaper() -> bool:
    """Adopt orphaned descendants (the exec'd command, once the runtime has exited)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def reap(pid: int, within: float = REAP_WAIT) -> int | None:
    """The exit code of our child ``pid`` once it has exited (None if it is not ours, or lives)."""
    deadline = time.monotonic() + within
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else (
                128 + os.WTERMSIG(status)
            )  # fmt: skip
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def session_output(control_path: str, session: str) -> str:
    """What the session printed (crun reports an exec that fails on its terminal)."""
    out = bytearray()
    try:
        # Followed to its end: everything it printed has been read by then.
        with Client(control_path, timeout=OUTPUT_WAIT) as client:
            client.call(ev.Logs(session, follow=True), ev.Attached)
            while (event := client.receive()) is not None and not isinstance(event, ev.Ended):
                if isinstance(event, ev.Output):
                    out += event.data
    except ClientError:
        pass  # what arrived is what there is
    return _ANSI.sub("", out.decode(errors="replace")).strip()


def _remove(control_path: str, session: str) -> None:
    """Remove the session and its log files: a failed exec leaves nothing behind."""
    try:
        with Client(control_path) as client:
            client.call(ev.Remove(session, force=True, keep_logs=False), ev.Removed)
    except ClientError:
        pass  # already gone


def run_exec(
    control_path: str,
    *,
    container: str,
    command: Sequence[str],
    runtime: Runtime,
    options: AttachOptions,
    attach: AttachFn,
    keep: bool = False,
    detach: bool = False,
) -> int:
    """Create the exec session, start the process with the runtime, attach to it.

    With ``detach``, print the session's name once the process runs instead
    of attaching; the session is kept until its status is delivered (to a
    ``consoled wait``, or an attached client).
    """
    subreaper = not detach and become_subreaper()
    workdir = tempfile.mkdtemp(prefix="consoled-exec-")
    pid_file = None if detach else os.path.join(workdir, "pid")
    command_pid: int | None = None
    try:
        with Client(control_path) as client:
            created = client.call(
                ev.CreateSocket(
                    container, exec_base=os.path.basename(command[0]), ephemeral=detach and not keep
                ),
                ev.SocketCreated,
            )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise

    def start_process() -> int | None:
        nonlocal command_pid
        process_file = None
        spec = runtime.process_spec(command)
        if spec is not None:
            process_file = os.path.join(workdir, "process.json")
            with open(process_file, "w") as f:
                json.dump(spec, f)
        argv = runtime.exec_argv(
            created.path, container, command, pid_file=pid_file, process_file=process_file
        )
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
            print(f"consoled: cannot run {runtime.path}: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_FAILED
        if proc.returncode != 0:
            message = runtime_message((proc.stderr or proc.stdout).decode(errors="replace"))
            if not message:
                message = runtime_message(session_output(control_path, created.session))
            _remove(control_path, created.session)
            status = runtime_failure_status(message)
            try:
                # Whose fault: the command's (docker's 126 and 127), or no
                # container to run it in (crun says "No such file" for that too).
                container_state(runtime.prefix, container)
            except ContainerError as exc:
                message, status = f"no running container {container}: {exc}", EXIT_RUNTIME_FAILED
            print(
                f"consoled: {os.path.basename(runtime.path)} exec failed "
                f"(exit {proc.returncode}): {message or 'no message'}",
                file=sys.stderr,
            )
            return status
        if pid_file is not None:
            with contextlib.suppress(OSError, ValueError), open(pid_file) as f:
                command_pid = int(f.read().strip())
        return None

    if detach:
        try:
            status = start_process()
        except BaseException:
            _remove(control_path, created.session)
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if status is not None:
            return status
        print(created.session, flush=True)
        return 0

    def own_status() -> int | None:
        # The runtime has exited: the command is our child (we are its subreaper).
        return reap(command_pid) if subreaper and command_pid else None

    ended: list[int | None] = []

    def own_status_once_ended() -> int | None:
        status = own_status()
        ended.append(status)
        return status

    try:
        status, session = attach(
            control_path,
            replace(options, session=created.session),
            start_process,
            own_status_once_ended,
        )
    except BaseException:
        _remove(control_path, created.session)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # By the name the daemon gave last: the container may have been renamed.
    if ended and not keep:
        # The command ended and its status is ours: nothing more to keep.
        _remove(control_path, session)
    elif ended and ended[0] is not None:
        # Kept: let `ls` and `wait` show the status we reaped.
        with contextlib.suppress(ClientError), Client(control_path) as client:
            client.call(ev.ReportExit(session, ended[0]), ev.ExitReported)
    return status
