"""Throw-away users and groups, and ways to act as them.

:class:`Accounts` makes users and groups with ``useradd`` and ``groupadd``
(named after this process, ``cdac-<pid>-<tag>``, so concurrent test sessions
never clash) and removes every one of them in :meth:`Accounts.close`, each
step tried even if an earlier one failed.  It is synchronous on purpose: a
pytest fixture made of it is set up before, and torn down after, every
trio fixture of the test, so no process of a test user is still running
when its user is deleted.

Processes run as a user through ``setpriv`` (:func:`setpriv`), with its
groups from ``/etc/group`` (``--init-groups``) or exactly the groups given.
:func:`connect_as` makes a control connection *as* a user, for tests that
speak the protocol themselves: a child running as that user connects and
hands the connected socket back over ``SCM_RIGHTS``; the kernel recorded the
child's credentials at ``connect()``, and those are what the daemon sees.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

#: Seconds any user administration command may take.
ADMIN_TIMEOUT = 30.0
#: Seconds a child connecting as a user may take.
CONNECT_TIMEOUT = 30.0

# Run as the user: connect to argv[2], hand the socket to fd argv[1], exit.
_CONNECT = """
import socket, sys
out = socket.socket(fileno=int(sys.argv[1]))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[2])
except OSError as exc:
    sys.exit(f"connect: {exc}")
socket.send_fds(out, [b"s"], [s.fileno()])
"""


class AccountError(Exception):
    """A user or group could not be made or removed."""


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    gid: int


@dataclass(frozen=True, slots=True)
class Account:
    """A user: its name, uid and primary gid (its own user group)."""

    name: str
    uid: int
    gid: int


def _admin(argv: Sequence[str]) -> None:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=ADMIN_TIMEOUT,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AccountError(f"{' '.join(argv)} took longer than {ADMIN_TIMEOUT} s") from None
    if result.returncode != 0:
        raise AccountError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")


class Accounts:
    """Users and groups that exist until :meth:`close`."""

    def __init__(self) -> None:
        self.prefix = f"cdac-{os.getpid()}-"
        self.users: list[str] = []
        self.groups: list[str] = []

    def group(self, tag: str) -> Group:
        name = self.prefix + tag
        _admin(["groupadd", name])
        self.groups.append(name)
        return Group(name, grp.getgrnam(name).gr_gid)

    def user(self, tag: str, groups: Sequence[Group] = ()) -> Account:
        """A user with a primary group of its own and ``groups`` as supplementary groups."""
        name = self.prefix + tag
        extra = ["--groups", ",".join(g.name for g in groups)] if groups else []
        _admin(
            ["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
             "--comment", f"consoled access test (pid {os.getpid()})",
             "--key", "SUB_UID_COUNT=0", "--key", "SUB_GID_COUNT=0", *extra, name]
        )  # fmt: skip
        self.users.append(name)
        entry = pwd.getpwnam(name)
        return Account(name, entry.pw_uid, entry.pw_gid)

    def close(self) -> None:
        """Delete every user (with its user group), then every group.

        Raises:
            AccountError: something could not be removed (all was tried).
        """
        errors = []
        for name in reversed(self.users):
            try:
                _admin(["userdel", name])
            except AccountError as exc:
                errors.append(str(exc))
        for name in reversed(self.groups):
            try:
                _admin(["groupdel", name])
            except AccountError as exc:
                errors.append(str(exc))
        self.users.clear()
        self.groups.clear()
        if errors:
            raise AccountError("\n".join(errors))


def setpriv(
    account: Account, *, gid: int | None = None, groups: Sequence[int] | None = None
) -> list[str]:
    """The ``setpriv`` prefix that runs a command as ``account``.

    Args:
        account: the user.
        gid: the primary group (default: the user's own).
        groups: exactly these supplementary groups (default: the user's, from /etc/group).
    """
    argv = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid if gid is None else gid}"]
    if groups is None:
        argv.append("--init-groups")
    elif groups:
        argv.append("--groups=" + ",".join(str(g) for g in groups))
    else:
        argv.append("--clear-groups")
    return [*argv, "--"]


async def connect_as(
    account: Account,
    python: Path,
    path: str,
    *,
    gid: int | None = None,
    groups: Sequence[int] | None = None,
) -> socket.socket:
    """A socket connected to ``path`` by a process running as ``account``.

    Args:
        account: the user.
        python: an interpreter the user can execute.
        path: the UNIX socket to connect to.
        gid: the primary group, as for :func:`setpriv`.
        groups: the supplementary groups, as for :func:`setpriv`.

    Raises:
        AssertionError: the user could not connect (the message says why).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with theirs, trio.fail_after(CONNECT_TIMEOUT):
            result = await trio.run_process(
                [*setpriv(account, gid=gid, groups=groups), str(python), "-c", _CONNECT,
                 str(theirs.fileno()), path],
                pass_fds=(theirs.fileno(),), capture_stderr=True, check=False, cwd="/",
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(
                f"{account.name} could not connect to {path}: {result.stderr.decode().strip()}"
            )
        # The child has exited: its message, and the fd in it, are already queued.
        ours.setblocking(False)
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        assert len(fds) == 1, fds
        return socket.socket(fileno=fds[0])
    finally:
        ours.close()


async def can_reach(account: Account, path: Path) -> bool:
    """Whether ``account`` can reach ``path`` (every directory on the way searchable)."""
    with trio.fail_after(ADMIN_TIMEOUT):
        result = await trio.run_process(
            [*setpriv(account), "test", "-e", str(path)], check=False, cwd="/",
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return result.returncode == 0
