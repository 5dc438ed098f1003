"""What ``consoled exec`` reads of a running container: its user names and its environment.

``-u USER[:GROUP]``: runc and crun take only numbers (``--user UID[:GID]``);
docker also takes names, looked up in the container's own ``/etc/passwd``
and ``/etc/group``, gives a user without a group its primary group, and
gives the command the user's groups: the primary one and, unless a group
was given, every group ``/etc/group`` lists the user in.  This does the
same (crun 1.8 has no option for those groups: the command is described to
both runtimes with ``--process``, see :mod:`.execute`).  The container's
files are read through
``/proc/PID/root`` of its init process, so what is seen is what the
container sees (its own mounts included), one path component at a time with
``O_NOFOLLOW``: a symbolic link the container planted (``/etc/passwd ->
/host/file``) is refused, never followed out of the container.

``-e NAME=VALUE``: docker adds the variables to the container's environment.
runc does the same with ``--env``, but crun 1.8 starts the command with only
the ``--env`` variables given, so the container's environment (its bundle's
``process.env``) is passed in full, with the additions last: the same
result with both.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

#: The most of /etc/passwd, /etc/group or config.json that is read.
MAX_FILE: Final = 4 * 1024 * 1024
#: Seconds ``RUNTIME state`` may take.
STATE_TIMEOUT: Final = 30.0


class ContainerError(Exception):
    """Something of the container cannot be read or resolved; the message says why."""


#: runc's log lines (logrus): ``time="..." level=error msg="..."``.
_LOGRUS: Final = re.compile(r'time="[^"]*" level=\w+ msg="((?:[^"\\]|\\.)*)"')
#: crun's: ``2026-11-30T17:00:23.159704Z: ...``.
_STAMPED: Final = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z: ")


def runtime_message(text: str) -> str:
    """What a runtime said on stderr, without its log format: the message only."""
    lines = []
    for line in text.strip().splitlines():
        found = _LOGRUS.fullmatch(line.strip())
        said = re.sub(r"\\(.)", r"\1", found.group(1)) if found else _STAMPED.sub("", line, 1)
        lines.append(said.strip())
    return "; ".join(line for line in lines if line)


def container_state(runtime_prefix: Sequence[str], container: str) -> dict[str, Any]:
    """``RUNTIME state ID`` of a running container.

    Args:
        runtime_prefix: the runtime and its global options.
        container: the container id.

    Raises:
        ContainerError: the runtime does not know it, or it does not run.
    """
    try:
        result = subprocess.run(
            [*runtime_prefix, "state", container],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=STATE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ContainerError(f"cannot run {runtime_prefix[0]} state: {exc}") from None
    if result.returncode != 0:
        message = runtime_message(result.stderr.decode(errors="replace"))
        message = message or f"exit {result.returncode}"
        raise ContainerError(f"{os.path.basename(runtime_prefix[0])} state {container}: {message}")
    try:
        state = json.loads(result.stdout)
    except ValueError:
        raise ContainerError(f"cannot read the state of container {container}") from None
    if not isinstance(state, dict) or state.get("status") != "running":
        raise ContainerError(f"container {container} is not running")
    return state


#: Gives a container's :func:`container_state` (``-u`` and ``-e`` share one).
StateOf = Callable[[], Mapping[str, Any]]


def container_process(state: StateOf, container: str) -> dict[str, Any]:
    """The process the container was made with (its bundle's ``process``).

    Raises:
        ContainerError: the runtime or the bundle does not say.
    """
    try:
        with open(os.path.join(str(state()["bundle"]), "config.json"), "rb") as f:
            process = json.loads(f.read(MAX_FILE))["process"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContainerError(f"cannot read container {container}'s process: {exc}") from None
    if not isinstance(process, dict):
        raise ContainerError(f"container {container}'s process is not an object")
    env = process.get("env", [])
    if not isinstance(env, list) or not all(isinstance(item, str) for item in env):
        raise ContainerError(f"container {container}'s process.env is not a list of strings")
    return process


def merge_env(base: Sequence[str], additions: Sequence[str]) -> list[str]:
    """``base`` with ``additions``, a later ``NAME=`` replacing an earlier one in its place."""
    merged: dict[str, str] = {}
    for item in (*base, *additions):
        merged[item.partition("=")[0]] = item
    return list(merged.values())


def read_in_root(root_fd: int, path: str) -> str | None:
    """A file of the container, by a relative path, never following a link; None if absent.

    Raises:
        ContainerError: a component is a link or not what it should be.
    """
    *dirs, name = path.split("/")
    fds: list[int] = []
    try:
        at = root_fd
        for part in dirs:
            at = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
            fds.append(at)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=at)
        fds.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ContainerError(f"/{path} in the container is not a regular file")
        return os.read(fd, MAX_FILE).decode(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ContainerError(
            f"cannot read /{path} in the container ({exc.strerror}; a symbolic link is not "
            "followed): give a numeric UID[:GID]"
        ) from None
    finally:
        for fd in fds:
            os.close(fd)


def _entries(text: str | None) -> list[list[str]]:
    if text is None:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


class ExecUser(NamedTuple):
    """Who an exec'd command runs as."""

    uid: int
    gid: int
    #: Its groups (setgroups(2)), as docker gives them: ``gid`` first.
    groups: tuple[int, ...]

    @property
    def spec(self) -> str:
        """``UID:GID``, for the runtime's ``--user``."""
        return f"{self.uid}:{self.gid}"


def resolve(spec: str, passwd: str | None, group: str | None) -> ExecUser:
    """``USER[:GROUP]`` as numbers, given the container's files (None: absent).

    As docker: a user or group given by number need not exist; a user
    without a group gets its primary group from ``/etc/passwd``, or 0, and
    the groups ``/etc/group`` lists its name in.

    Raises:
        ContainerError: a name that the files do not hold.
    """
    user, sep, grp = spec.partition(":")
    if not user or (sep and not grp):
        raise ContainerError(f"invalid user {spec!r}: use USER[:GROUP], names or numbers")
    users = [e for e in _entries(passwd) if len(e) >= 4]
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in users if e[2] == user), None)
    else:
        entry = next((e for e in users if e[0] == user), None)
        if entry is None or not entry[2].isdigit():
            raise ContainerError(f"unable to find user {user}: no matching entry in /etc/passwd")
        uid = int(entry[2])
    groups = [e for e in _entries(group) if len(e) >= 3]
    if sep:
        if grp.isdigit():
            gid = int(grp)
        else:
            found = next((e for e in groups if e[0] == grp), None)
            if found is None or not found[2].isdigit():
                raise ContainerError(f"unable to find group {grp}: no matching entry in /etc/group")
            gid = int(found[2])
        return ExecUser(uid, gid, (gid,))  # a group given: that one only
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    member = [] if entry is None else [
        int(e[2]) for e in groups
        if len(e) >= 4 and e[2].isdigit() and entry[0] in e[3].split(",")
    ]  # fmt: skip
    return ExecUser(uid, gid, (gid, *member))


def container_user(spec: str, state: StateOf, container: str) -> ExecUser:
    """Resolve ``spec`` in the running container ``container``.

    Raises:
        ContainerError: it cannot be resolved; the message says why.
    """
    user, sep, grp = spec.partition(":")
    if user.isdigit() and sep and grp.isdigit():
        return ExecUser(int(user), int(grp), (int(grp),))  # numbers only: nothing to look up
    try:
        try:
            root = os.open(f"/proc/{int(state()['pid'])}/root", os.O_PATH | os.O_DIRECTORY)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ContainerError(f"cannot open container {container}'s root: {exc}") from None
        try:
            return resolve(spec, read_in_root(root, "etc/passwd"), read_in_root(root, "etc/group"))
        finally:
            os.close(root)
    except ContainerError as exc:
        if user.isdigit() and not sep:
            return ExecUser(int(user), 0, (0,))  # as docker, where it finds no files
        raise ContainerError(
            f"cannot run as user {spec!r} in container {container}: {exc}"
        ) from None
