"""The state directory: who could redirect it, its lock, and its socket paths.

Whoever can replace the state directory can put their own sockets where
clients look, and read what they type.  So the daemon refuses a state
directory whose parent another user could write; it holds an exclusive lock
on it for its whole life, so that a second daemon on the same directory
refuses to start; and it refuses a directory so long that its socket paths
would not fit a UNIX socket address.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from ..io.fds import OwnedFd
from ..io.listener import MAX_SOCKET_PATH
from .config import LOCK_FILE, DaemonConfig


class StartupError(Exception):
    """The daemon cannot start; the message says why, for the user."""


def prepare_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path``, or check an existing one is ours and set its mode.

    Also refuses a directory whose parent another user could write to (who
    could then replace our sockets with theirs), unless the parent is sticky
    and root's, as /tmp is.
    """
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        st = os.lstat(path)
        parent = os.stat(path.parent)
    except OSError as exc:
        raise StartupError(f"cannot create directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"{path} exists and is not a directory")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise StartupError(f"{path} belongs to uid {st.st_uid}, not to us (uid {euid})")
    sticky_root = parent.st_mode & stat.S_ISVTX and parent.st_uid == 0
    if parent.st_uid not in (0, euid) or (parent.st_mode & 0o022 and not sticky_root):
        raise StartupError(
            f"{path.parent} can be written by other users (mode "
            f"{stat.S_IMODE(parent.st_mode):04o}, uid {parent.st_uid}): they could replace "
            f"the daemon's sockets; choose a state directory under a directory only root "
            f"or uid {euid} can write"
        )
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def acquire_lock(state_dir: Path) -> OwnedFd:
    """Hold an exclusive lock on the state directory for the daemon's life."""
    path = state_dir / LOCK_FILE
    owner = OwnedFd(
        os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600), "lock"
    )
    try:
        fcntl.flock(owner.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(owner.fd, 32, 0).decode(errors="replace").strip() or "unknown"
        owner.close()
        raise StartupError(
            f"another consoled (pid {other}) is already serving {state_dir}"
        ) from None
    return owner


def write_pid(lock: OwnedFd) -> None:
    os.ftruncate(lock.fd, 0)
    os.pwrite(lock.fd, f"{os.getpid()}\n".encode(), 0)


def check_paths(config: DaemonConfig) -> None:
    longest = config.intake_dir / ("9" * 18 + ".sock")
    for path in (config.control_socket, config.console_socket, longest):
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise StartupError(
                f"state directory {config.state_dir} is too long: socket path {path} "
                f"would exceed the {MAX_SOCKET_PATH}-byte limit of a UNIX socket address"
            )
