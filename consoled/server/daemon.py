"""``consoled serve``: the daemon's nursery tree, start-up and shutdown.

::

    serve
    ├── signal watcher (this task)
    ├── control listener ── one nursery per client connection
    ├── well-known console socket listener
    └── sessions (one task each: intake, then drain)

A signal starts shutdown: listeners stop, attached clients are told the
daemon is going, get ``shutdown_grace`` seconds to receive it, then the
whole tree is cancelled.  Closing the masters hangs up the containers'
terminals, as closing a terminal window does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import structlog
import trio

from .. import __version__
from .config import DaemonConfig
from .control import ControlServer
from .intake import MAX_SOCKET_PATH
from .logfile import open_log_dir
from .notify import notify
from .registry import SessionTable
from .wellknown import WellKnownSocket

log = structlog.get_logger("consoled.daemon")


class StartupError(Exception):
    """The daemon cannot start; the message says why, for the user."""


def prepare_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or check an existing one is ours and tighten it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise StartupError(f"cannot create directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"{path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise StartupError(f"{path} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


@contextlib.contextmanager
def state_dir_lock(config: DaemonConfig) -> Iterator[None]:
    """Hold an exclusive lock on the state directory for the daemon's life."""
    path = config.state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StartupError(
                f"another consoled (pid {other}) is already serving {config.state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the open-file soft limit to the hard limit: we hold one fd per session."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def check_paths(config: DaemonConfig) -> None:
    longest = config.intake_dir / ("9" * 12 + ".sock")
    for path in (config.control_socket, config.console_socket, longest):
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise StartupError(
                f"state directory {config.state_dir} is too long: socket path {path} "
                f"would exceed the {MAX_SOCKET_PATH}-byte limit of a UNIX socket address"
            )


def clean_intake_dir(config: DaemonConfig) -> None:
    """Remove console sockets left by a daemon that did not exit cleanly."""
    for entry in config.intake_dir.iterdir():
        if entry.name.endswith(".sock"):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


async def serve(
    config: DaemonConfig, *, task_status: trio.TaskStatus[SessionTable] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until SIGTERM, SIGINT or SIGHUP.

    Raises:
        StartupError: the state directory or log directory cannot be used.
    """
    check_paths(config)
    prepare_dir(config.state_dir)
    with contextlib.ExitStack() as stack:
        stack.enter_context(state_dir_lock(config))
        prepare_dir(config.intake_dir)
        clean_intake_dir(config)
        log_dir_fd = None
        if config.log_dir is not None:
            try:
                log_dir_fd = open_log_dir(config.log_dir)
            except OSError as exc:
                raise StartupError(
                    f"cannot use log directory {config.log_dir}: {exc.strerror}"
                ) from None
            stack.callback(os.close, log_dir_fd)
        soft, _ = raise_nofile_limit()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as root:
                table = SessionTable(config, root, log_dir_fd)
                control = ControlServer(config, table)
                await root.start(control.serve)
                await root.start(WellKnownSocket(config, table).serve)
                log.info(
                    "daemon.ready",
                    version=__version__,
                    pid=os.getpid(),
                    state_dir=os.fspath(config.state_dir),
                    control_socket=os.fspath(config.control_socket),
                    console_socket=os.fspath(config.console_socket),
                    nofile=soft,
                )
                notify(f"READY=1\nSTATUS=serving {config.state_dir}\nMAINPID={os.getpid()}")
                task_status.started(table)
                async for signum in signals:
                    log.info("daemon.stopping", signal=signal.Signals(signum).name)
                    break
                notify("STOPPING=1")
                table.shutdown()
                with trio.move_on_after(config.shutdown_grace):
                    await table.wait_streams_done()
                root.cancel_scope.cancel()
        log.info("daemon.stopped")
