"""A throw-away user with cgroups of its own, removed whatever happens.

:class:`ThrowawayUser` is what :mod:`tests.support.usermanager` runs a
systemd user manager for: a user made with ``useradd`` (named after this
process, ``cdsd-<pid>-<n>``) and a cgroup2 subtree for everything the test
starts::

    <cgroup2 mount>/consoled-sd-<user>/     ours, root-owned
        manager/                            delegated to the user (chowned)
        helpers/                            every other process we start

Whatever the harness starts lands in that subtree (:meth:`ThrowawayUser.wrap`
puts a command in ``helpers/`` before it execs), so "kill what we started"
is exactly ``cgroup.kill`` on it, and nothing outside it is ever signalled.

Clean-up happens twice over.  On leaving :meth:`ThrowawayUser.create`,
shielded and bounded, whatever the way out (an exception, cancellation,
KeyboardInterrupt): kill what is left in the subtree, wait for it to be
empty, remove it, ``userdel --remove`` the user.  And a guardian, a shell
started first in a session of its own, holds the read end of a pipe only we
write to: if this process dies without saying ``done`` (SIGKILL, SIGTERM,
a crash), the guardian sees end of input and does the same clean-up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

#: Bound on each step of the clean-up, and on user administration commands.
CLEANUP_TIMEOUT = 10.0
ADMIN_TIMEOUT = 30.0

_serial = itertools.count(1)

# Told "user NAME" and "cgroup DIR" as they come into being; "done" means we
# cleaned up ourselves.  End of input without "done": we died, clean up.
_GUARDIAN = r"""
user= top=
while read -r key value; do
    case $key in
        user) user=$value ;;
        cgroup) top=$value ;;
        done) exit 0 ;;
    esac
done
if [ -n "$top" ] && [ -d "$top" ]; then
    echo 1 > "$top/cgroup.kill"
    i=0
    while grep -q '^populated 1' "$top/cgroup.events" && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    find "$top" -depth -type d -exec rmdir {} \;
fi
if [ -n "$user" ]; then
    userdel --remove "$user" 2>/dev/null
fi
exit 0
"""

# Moves itself into the cgroup $0, then execs the command.
_ENTER_CGROUP = 'echo $$ > "$0/cgroup.procs" && exec "$@"'

_DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")


class ThrowawayError(Exception):
    """The throw-away user or its cgroups could not be made or removed."""


def cgroup2_root() -> Path:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup[/unified]``)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            if after.split()[0] == "cgroup2":
                return Path(before.split()[4])
    raise RuntimeError("no cgroup2 mount: a user manager needs a delegated cgroup2 subtree")


def processes_in(cgroup: Path) -> list[int]:
    """Pids of the processes in ``cgroup`` (a cgroup2 directory) or below it."""
    pids: list[int] = []
    for dirpath, _, _ in os.walk(cgroup):
        with contextlib.suppress(FileNotFoundError):
            pids.extend(int(pid) for pid in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


async def wait_exited(pids: Sequence[int]) -> None:
    """Wait until every process in ``pids`` has exited (pidfds, no polling)."""
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)


async def empty_cgroup(cgroup: Path, timeout: float = CLEANUP_TIMEOUT) -> None:
    """Kill every process in our ``cgroup`` subtree and wait until none is left.

    Raises:
        ThrowawayError: processes were still there after ``timeout`` seconds.
    """
    with trio.move_on_after(timeout):
        while pids := processes_in(cgroup):
            (cgroup / "cgroup.kill").write_text("1")
            await wait_exited(pids)
        return
    raise ThrowawayError(f"{cgroup} still holds {processes_in(cgroup)} after {timeout} s")


def remove_cgroup(cgroup: Path) -> None:
    """``rmdir`` an empty cgroup subtree, children first."""
    for dirpath, _, _ in sorted(os.walk(cgroup), key=lambda walk: -len(walk[0])):
        os.rmdir(dirpath)


async def _admin(argv: Sequence[str]) -> None:
    with trio.fail_after(ADMIN_TIMEOUT):
        result = await trio.run_process(
            list(argv), stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
            check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise ThrowawayError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.decode(errors='replace')}"
        )


class ThrowawayUser:
    """A user and a cgroup subtree that exist only while a test needs them.

    Create it with :meth:`create`, never directly.

    Attributes:
        name: the user's name.
        uid: its uid.
        gid: its primary group's gid.
        home: its home directory, 0700 and owned by it; removed with it.
        cgroup: our cgroup subtree (root-owned).
        delegated: the part of it delegated to the user, for its manager.
        helpers: the part of it for everything else we start.
        guardian_pid: the pid of the guardian that cleans up if we die.
    """

    def __init__(self, name: str, cgroup: Path, guardian_pid: int) -> None:
        entry = pwd.getpwnam(name)
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.home = Path(entry.pw_dir)
        self.cgroup = cgroup
        self.delegated = cgroup / "manager"
        self.helpers = cgroup / "helpers"
        self.guardian_pid = guardian_pid

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls) -> AsyncIterator[ThrowawayUser]:
        """Make the user and its cgroups; remove them, and all their processes, on exit.

        Yields:
            The user.

        Raises:
            ThrowawayError: ``useradd`` failed, or something could not be
                removed (the guardian then tries again).
        """
        name = f"cdsd-{os.getpid()}-{next(_serial)}"
        cgroup = cgroup2_root() / f"consoled-sd-{name}"
        guardian = await trio.lowlevel.open_process(
            ["sh", "-c", _GUARDIAN], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        assert guardian.stdin is not None
        user: str | None = None
        ours: Path | None = None
        try:
            await _admin(
                ["useradd", "--create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                 "--comment", f"consoled test user manager (pid {os.getpid()})",
                 "--key", "SUB_UID_COUNT=0", "--key", "SUB_GID_COUNT=0", name]
            )  # fmt: skip
            user = name
            await guardian.stdin.send_all(f"user {name}\n".encode())
            cgroup.mkdir()
            ours = cgroup
            await guardian.stdin.send_all(f"cgroup {cgroup}\n".encode())
            if not (cgroup / "cgroup.kill").exists():
                # Without it, killing exactly our processes would be racy.
                raise RuntimeError("cgroup.kill is missing: the harness needs Linux 5.14 or later")
            account = cls(name, cgroup, guardian.pid)
            account.helpers.mkdir()
            account.delegated.mkdir()
            for path in (account.delegated, *(account.delegated / f for f in _DELEGATED_FILES)):
                os.chown(path, account.uid, account.gid)
            yield account
        except BaseException as exc:
            for error in await _finish(guardian, user, ours):
                exc.add_note(f"and the clean-up failed: {error}")
            raise
        errors = await _finish(guardian, user, ours)
        if errors:
            raise ThrowawayError("\n".join(errors))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in our ``helpers`` cgroup, so that clean-up finds it."""
        return ["sh", "-c", _ENTER_CGROUP, str(self.helpers), *argv]


async def _finish(guardian: trio.Process, user: str | None, cgroup: Path | None) -> list[str]:
    """Remove what was created, then release the guardian; return what failed.

    Each step is tried even if an earlier one failed.  When something did,
    the guardian is not told ``done``, so it tries again at once.
    """
    errors = []
    with trio.CancelScope(shield=True):
        if cgroup is not None:
            try:
                await empty_cgroup(cgroup)
                remove_cgroup(cgroup)
            except (ThrowawayError, OSError) as exc:
                errors.append(f"cgroup {cgroup}: {exc}")
        if user is not None:
            try:
                await _admin(["userdel", "--remove", user])
            except (ThrowawayError, trio.TooSlowError) as exc:
                errors.append(f"user {user}: {exc}")
        assert guardian.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            if not errors:
                await guardian.stdin.send_all(b"done\n")
            await guardian.stdin.aclose()
        with trio.move_on_after(CLEANUP_TIMEOUT):
            await guardian.wait()
    return errors
