"""The state directory: who could redirect it, its lock, and its socket paths.

Whoever can replace the state directory, or a directory on the way to it,
can put their own sockets where clients look, and read what they type.  So
the daemon refuses a state directory that anyone but root and its own user
could redirect, before it creates anything there; it holds an exclusive lock
on it for its whole life, so that a second daemon on the same directory
refuses to start; and it refuses a directory so long that its socket paths
would not fit a UNIX socket address.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Final

from ..io.fds import OwnedFd
from ..io.listener import MAX_SOCKET_PATH
from .config import LOCK_FILE, DaemonConfig

#: Symbolic links followed on the way to the state directory, at most (the kernel's limit).
MAX_SYMLINKS: Final = 40


class StartupError(Exception):
    """The daemon cannot start; the message says why, for the user."""


def _unsafe_dir(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why users other than root and us could replace entries of directory ``path``, or None."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, euid):
        return f"{path} belongs to uid {st.st_uid} (mode {mode:04o})"
    sticky_root = mode & stat.S_ISVTX and st.st_uid == 0
    if mode & 0o022 and not sticky_root:
        return f"{path} can be written by other users (mode {mode:04o}, uid {st.st_uid})"
    return None


def check_ancestors(path: Path) -> None:
    """Refuse ``path`` if a user other than root or us could redirect it.

    Whoever can replace a directory on the way to our sockets can put theirs
    in its place, and a client would talk to them.  So every directory on
    the way to ``path``, following symbolic links as ``connect()`` will, must
    belong to root or to us and be writable by nobody else, unless it is
    sticky and root's (as /tmp: nobody can move our entries there); a
    symbolic link on the way must belong to root or to us.  What does not
    exist yet is ours to create.

    Raises:
        StartupError: names the directory or link, and why.
    """
    euid = os.geteuid()
    advice = (
        f": they could replace the daemon's sockets; choose a state directory under "
        f"directories only root or uid {euid} can write"
    )
    todo = list(Path(os.path.abspath(path)).parts[1:])
    current = "/"
    problem = _unsafe_dir(current, os.stat(current), euid)
    if problem is not None:
        raise StartupError(problem + advice)
    links = 0
    # Invariant: `current` is a directory without symbolic links, checked safe.
    while len(todo) > 1:  # the last component is the directory itself: prepare_dir checks it
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return  # from here on, we create everything
        except OSError as exc:
            raise StartupError(f"cannot check {entry}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (0, euid):
                raise StartupError(
                    f"{entry} is a symbolic link owned by uid {st.st_uid}: that user could "
                    f"point it elsewhere{advice}"
                )
            links += 1
            if links > MAX_SYMLINKS:
                raise StartupError(f"too many symbolic links on the way to {path}")
            target = Path(os.readlink(entry))
            if target.is_absolute():
                current = "/"
                todo[:0] = target.parts[1:]
            else:
                todo[:0] = target.parts
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise StartupError(f"{entry} is not a directory")
        problem = _unsafe_dir(entry, st, euid)
        if problem is not None:
            raise StartupError(problem + advice)
        current = entry


def prepare_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path``, or check an existing one is ours and set its mode.

    Refuses a path that another user could redirect (see
    :func:`check_ancestors`), before creating anything, and again once the
    directory exists.
    """
    check_ancestors(path)
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise StartupError(f"cannot create directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"{path} exists and is not a directory")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise StartupError(f"{path} belongs to uid {st.st_uid}, not to us (uid {euid})")
    check_ancestors(path)  # directories made just now (with our umask), and any change meanwhile
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
