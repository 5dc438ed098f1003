"""A real systemd user manager for tests, run safely on a shared machine.

Tests of consoled under systemd (Type=notify, the fd store, automatic
restarts) need a service manager, and this machine's PID 1 is not systemd.
So each :class:`UserManager` starts ``/lib/systemd/systemd --user`` for a
throw-away user, which needs neither PID 1 nor logind nor PAM:

1. ``useradd`` a user, and make a cgroup2 subtree whose ``manager`` part is
   delegated to it (chowned, with its ``cgroup.procs``,
   ``cgroup.subtree_control`` and ``cgroup.threads``): see
   :mod:`tests.support.throwaway`.  Its home is the test's work directory.
2. ``unshare --mount --propagation private``, and inside that namespace
   only: a fresh tmpfs on /run holding an empty ``/run/systemd/system``
   (what makes systemd tools believe systemd is running) and
   ``/run/user/<uid>`` (0700, the user's XDG_RUNTIME_DIR; nothing else
   creates it, as there is no logind).  The shell writes its pid to the
   delegated ``cgroup.procs`` and execs ``setpriv`` (the user's uid, gid
   and groups), which execs the manager: the pid we started is the
   manager's.
3. The manager says ``READY=1`` on ``$NOTIFY_SOCKET`` (a socket we hold,
   as for ``user@.service``); then ``systemctl --user is-system-running
   --wait`` returns once its initial jobs are done (``running``).
4. Every command against it (``systemctl``, ``systemd-run``, anything run
   "as the user") goes through ``nsenter -t <manager> -m`` and ``setpriv``
   with ``XDG_RUNTIME_DIR`` set and no ``DBUS_SESSION_BUS_ADDRESS``: the
   tools then use the manager's private socket,
   ``$XDG_RUNTIME_DIR/systemd/private``, and need no D-Bus daemon.

Safety rules, because the machine is shared:

- systemd never runs as PID 1, not even in a namespace (it would wipe /tmp
  and remount the shared cgroup filesystem read-only).
- ``/run/systemd/system`` is only ever created on the tmpfs inside the
  private mount namespace; the launch script checks that its mount
  namespace is not ours before it mounts anything.
- Every process the harness starts runs in the throw-away user's cgroup
  subtree, and only that subtree is ever killed.  On the way out the
  manager gets SIGTERM (it stops its units), the root helpers are killed,
  then :mod:`tests.support.throwaway` empties and removes the subtree and
  deletes the user, on every way out, and through its guardian even if
  this process is killed.

There is no journald in the namespace: services log to files in the home
directory (:meth:`UserManager.unit_log`), and the manager's own messages go
to :attr:`UserManager.manager_log` (a user manager logs to /dev/console,
and only if that is a terminal: a pty slave is bind-mounted there in the
namespace, and ``cat`` copies its master to the file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tty
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import trio

from tests.support.throwaway import ThrowawayUser

SYSTEMD = "/lib/systemd/systemd"
#: Seconds for the manager to become ready, and for it to stop on SIGTERM.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
#: Default bound on one command run against the manager.
COMMAND_TIMEOUT = 30.0
#: Default bound on waiting for a unit property, and the poll interval.
WAIT_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# $1 our mount namespace, $2 uid, $3 gid, $4 cgroup dir, $5 console log,
# then the manager's command line.  Runs as root in the new namespace.
_LAUNCH = r"""
set -eu
if [ "$(readlink /proc/self/ns/mnt)" = "$1" ]; then
    echo "usermanager: not in a private mount namespace, refusing to touch /run" >&2
    exit 1
fi
uid=$2 gid=$3 cgroup=$4 console=$5
shift 5
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/systemd/system "/run/user/$uid"
chown "$uid:$gid" "/run/user/$uid"
chmod 0700 "/run/user/$uid"
if [ -e /dev/console ]; then
    mount --bind "$console" /dev/console
fi
echo $$ > "$cgroup/cgroup.procs"
exec setpriv --reuid="$uid" --regid="$gid" --init-groups -- "$@"
"""


class UserManagerError(Exception):
    """The manager could not be started, or a command against it failed."""


def _ns_id(kind: str, pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<{path}: {exc}>"
    return data[-limit:].decode(errors="replace")


class UserManager:
    """A running ``systemd --user`` for a throw-away user, and ways to drive it.

    Create it with :meth:`start`, never directly.  Everything the manager
    sees under /run exists only in its mount namespace; ``home`` is a normal
    directory visible to both sides, owned by the user, for scripts, sockets
    and result files.

    Attributes:
        account: the throw-away user and its cgroups.
        user: the user's name.
        uid: its uid.
        gid: its primary gid.
        home: its home directory (removed with the user).
        runtime_dir: its XDG_RUNTIME_DIR, ``/run/user/<uid>``, which exists
            only inside the namespace.
        cgroup: the delegated cgroup2 directory the manager runs in.
        manager_log: the manager's own log messages.
        manager_stderr: the manager's stdout and stderr (generators, early
            errors).
        process: the manager's process.
        system_state: what ``is-system-running`` said once it had started.
    """

    def __init__(self, account: ThrowawayUser) -> None:
        self.account = account
        self.user = account.name
        self.uid = account.uid
        self.gid = account.gid
        self.home = account.home
        self.runtime_dir = Path(f"/run/user/{self.uid}")
        self.cgroup = account.delegated
        self.manager_log = self.home / "manager.log"
        self.manager_stderr = self.home / "manager.stderr"
        self.process: trio.Process | None = None
        self.system_state = ""
        self._helpers: list[trio.Process] = []
        self._console_reader: trio.Process | None = None
        self._console_slave = -1

    @property
    def pid(self) -> int:
        """The manager's pid."""
        assert self.process is not None
        return self.process.pid

    # --- life cycle ------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, *, log_level: str = "info", timeout: float = START_TIMEOUT
    ) -> AsyncIterator[UserManager]:
        """Create a user and its cgroups, start its manager, and wait until it is up.

        Everything is undone on exit, whatever happened inside.

        Args:
            log_level: the manager's ``SYSTEMD_LOG_LEVEL`` (``debug`` logs
                every fd store and restart decision to :attr:`manager_log`).
            timeout: seconds for the manager to finish starting.

        Yields:
            The running manager.

        Raises:
            UserManagerError: the manager did not come up; the message holds
                its log.
        """
        if os.geteuid() != 0:
            raise UserManagerError("the user manager harness needs root")
        if not os.access(SYSTEMD, os.X_OK):
            raise UserManagerError(f"{SYSTEMD} is missing: run scripts/setup (installs systemd)")
        async with ThrowawayUser.create() as account:
            manager = cls(account)
            (manager.home / "logs").mkdir()
            manager.manager_log.touch()
            for path in (manager.home / "logs", manager.manager_log):
                os.chown(path, manager.uid, manager.gid)
            try:
                await manager._launch(log_level, timeout)
                yield manager
            finally:
                await manager._stop()

    async def _launch(self, log_level: str, timeout: float) -> None:
        console = await self._open_console()
        notify_path = str(self.home / "notify.sock")
        notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await notify.bind(notify_path)
            os.chown(notify_path, self.uid, self.gid)
            env = self.user_env(
                NOTIFY_SOCKET=notify_path, SYSTEMD_LOG_LEVEL=log_level, SYSTEMD_LOG_TARGET="console"
            )
            # No wrap(): the launch script puts itself in the delegated cgroup.
            argv = [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", _LAUNCH, "launch", _ns_id("mnt"), str(self.uid), str(self.gid),
                str(self.cgroup), console, SYSTEMD, "--user",
            ]  # fmt: skip
            err = os.open(self.manager_stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                # A session of its own: a ctrl-c meant for pytest is not for it.
                self.process = await trio.lowlevel.open_process(
                    argv, env=env, cwd=str(self.home), stdin=subprocess.DEVNULL,
                    stdout=err, stderr=err, start_new_session=True,
                )  # fmt: skip
            finally:
                os.close(err)
            try:
                with trio.fail_after(timeout):
                    await self._wait_ready(notify)
            except trio.TooSlowError:
                raise UserManagerError(
                    f"user manager not ready within {timeout} s\n{self.diagnostics()}"
                ) from None
        finally:
            notify.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(notify_path)
        # READY=1 comes at basic.target; wait for the rest of the startup
        # too, so that tests start from a settled manager.
        result = await self.systemctl("is-system-running", "--wait", check=False, timeout=timeout)
        self.system_state = result.stdout.decode().strip()
        if self.system_state not in ("running", "degraded"):
            raise UserManagerError(
                f"user manager is {self.system_state!r} after starting\n{self.diagnostics()}"
            )

    async def _open_console(self) -> str:
        """A terminal for the manager's log, copied to :attr:`manager_log`.

        A user manager logs to /dev/console, and only if that is a terminal,
        so the namespace gets a pty slave there, and ``cat``, a helper of
        ours, copies what arrives on the master to the log file.  We keep a
        slave fd until the manager has stopped: otherwise the master reads
        EIO whenever the manager happens to have the console closed.

        Returns:
            The slave's path, for the launch script to bind-mount.
        """
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            console = os.ttyname(slave)
            os.chown(console, self.uid, self.gid)
            os.chmod(console, 0o600)
            log = os.open(self.manager_log, os.O_WRONLY | os.O_APPEND)
            try:
                self._console_reader = await trio.lowlevel.open_process(
                    self.account.wrap(["cat"]), stdin=master, stdout=log,
                    stderr=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            finally:
                os.close(log)
        except BaseException:
            os.close(slave)
            raise
        finally:
            os.close(master)
        self._console_slave = slave
        return console

    async def _wait_ready(self, notify: trio.socket.SocketType) -> None:
        """Return on READY=1; raise if the manager exits first."""
        assert self.process is not None
        process = self.process
        exited: int | None = None
        async with trio.open_nursery() as race:

            async def ready() -> None:
                while b"READY=1" not in (await notify.recv(4096)).split(b"\n"):
                    pass
                race.cancel_scope.cancel()

            async def died() -> None:
                nonlocal exited
                exited = await process.wait()
                race.cancel_scope.cancel()

            race.start_soon(ready)
            race.start_soon(died)
        if exited is not None:
            raise UserManagerError(
                f"user manager exited {exited} before it was ready\n{self.diagnostics()}"
            )

    def diagnostics(self) -> str:
        """The tails of the manager's stderr and log, for error messages."""
        return (
            f"--- manager stderr ({self.manager_stderr}):\n{_tail(self.manager_stderr)}\n"
            f"--- manager log ({self.manager_log}):\n{_tail(self.manager_log)}"
        )

    async def _stop(self) -> None:
        """Stop the helpers and the manager; what is left, the account's exit kills."""
        with trio.CancelScope(shield=True):
            for helper in self._helpers:
                await _kill_and_reap(helper)
            if self.process is not None:
                if self.process.returncode is None:
                    self.process.send_signal(signal.SIGTERM)  # it stops its units, then exits
                with trio.move_on_after(STOP_TIMEOUT):
                    await self.process.wait()
            if self._console_slave >= 0:
                os.close(self._console_slave)  # cat copies the rest, reads EIO and exits
                self._console_slave = -1
            if self._console_reader is not None:
                with trio.move_on_after(STOP_TIMEOUT):
                    await self._console_reader.wait()

    # --- commands --------------------------------------------------------------------

    def user_env(self, **extra: str) -> dict[str, str]:
        """The environment of a login of the user (no D-Bus session address)."""
        env = {
            "PATH": USER_PATH,
            "HOME": str(self.home),
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
        }
        env.update(extra)
        return env

    def as_user(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the manager's mount namespace, as the user."""
        return [
            *self.as_root(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}"]),
            "--init-groups", "--", *argv,
        ]  # fmt: skip

    def as_root(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the manager's mount namespace, as root.

        It runs in the account's helpers cgroup, so clean-up finds it.
        """
        return self.account.wrap(["nsenter", "-t", str(self.pid), "-m", "--", *argv])

    async def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command as the user, inside the namespace, output captured.

        Args:
            argv: the command.
            check: raise if it exits non-zero.
            stdin: bytes for its standard input.
            env: extra environment on top of :meth:`user_env`.
            timeout: seconds it may take.

        Returns:
            The finished process, stdout and stderr as bytes.

        Raises:
            UserManagerError: ``check`` and the command failed.
            trio.TooSlowError: it took longer than ``timeout``.
        """
        return await self._run(self.as_user(argv), self.user_env(**(env or {})), check, stdin,
                               timeout)  # fmt: skip

    async def run_root(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command as root inside the namespace (sees its /run), output captured."""
        return await self._run(self.as_root(argv), dict(os.environ), check, b"", timeout)

    async def _run(
        self, argv: list[str], env: dict[str, str], check: bool, stdin: bytes, timeout: float
    ) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(timeout):
            result = await trio.run_process(
                argv, env=env, cwd=str(self.home), stdin=stdin,
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        if check and result.returncode != 0:
            raise UserManagerError(
                f"{' '.join(argv)} exited {result.returncode}:\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    async def spawn_root(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = subprocess.PIPE,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> trio.Process:
        """Start a long-lived root helper inside the namespace.

        It is killed (by its pid) before the manager is stopped, if it still
        runs.

        Args:
            argv: the helper's command line.
            stdin: as for ``trio.lowlevel.open_process``; a pipe by default.
            stdout: likewise.
            stderr: likewise; inherited by default.
            env: its environment (ours by default).

        Returns:
            The running helper.
        """
        proc = await trio.lowlevel.open_process(
            self.as_root(argv), stdin=stdin, stdout=stdout, stderr=stderr,
            env=None if env is None else dict(env), cwd=str(self.home),
        )  # fmt: skip
        self._helpers.append(proc)
        return proc

    async def systemctl(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        """``systemctl --user ARGS`` as the user."""
        return await self.run(["systemctl", "--user", "--no-pager", *args], check=check,
                              timeout=timeout)  # fmt: skip

    def unit_log(self, unit: str) -> Path:
        """Where :meth:`systemd_run` sends the unit's stdout and stderr."""
        return self.home / "logs" / f"{unit}.log"

    async def systemd_run(
        self,
        unit: str,
        argv: Sequence[str],
        *,
        properties: Sequence[str] = (),
        options: Sequence[str] = (),
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[bytes]:
        """Start ``argv`` as the transient service ``unit`` (``systemd-run --user``).

        Like ``systemd-run``, this returns once the start job finished: for
        ``Type=notify`` after the service said ``READY=1``.  Output goes to
        :meth:`unit_log` unless ``properties`` set ``StandardOutput=``.

        Args:
            unit: the unit's name, with or without ``.service``.
            argv: the service's command line (absolute program path).
            properties: ``-p`` assignments, e.g. ``"Type=notify"``.
            options: more ``systemd-run`` options.
            check: raise if ``systemd-run`` fails.
            timeout: seconds it may take.

        Returns:
            ``systemd-run``'s result.
        """
        log = self.unit_log(unit)
        props = [f"StandardOutput=append:{log}", f"StandardError=append:{log}", *properties]
        result = await self.run(
            ["systemd-run", "--user", f"--unit={unit}", *(f"--property={p}" for p in props),
             *options, "--", *argv],
            check=False, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise UserManagerError(
                f"systemd-run {unit} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}\n--- {log}:\n{_tail(log)}"
            )
        return result

    async def show(self, unit: str, prop: str) -> str:
        """One property of ``unit``, as ``systemctl show -P`` prints it."""
        result = await self.systemctl("show", "-P", prop, unit)
        return result.stdout.decode().rstrip("\n")

    async def main_pid(self, unit: str) -> int:
        """The unit's MainPID (0 when it has none)."""
        return int(await self.show(unit, "MainPID"))

    async def wait_property(
        self,
        unit: str,
        prop: str,
        expected: str | Callable[[str], bool],
        *,
        fail: Callable[[str], bool] | None = None,
        timeout: float = WAIT_TIMEOUT,
    ) -> str:
        """Wait until ``prop`` of ``unit`` is ``expected`` (or satisfies it).

        The manager's D-Bus signals would need a bus; ``systemctl show`` is
        polled at a short interval instead, within ``timeout``.

        Args:
            unit: the unit.
            prop: the property, e.g. ``ActiveState`` or ``NRestarts``.
            expected: the value, or a predicate on it.
            fail: a predicate for values that mean it will never come.
            timeout: seconds to wait.

        Returns:
            The value that matched.

        Raises:
            AssertionError: it did not match in time, or a ``fail`` value
                was seen; the message holds the unit's status and log.
        """
        matches = expected if callable(expected) else expected.__eq__
        value = ""
        with trio.move_on_after(timeout):
            while True:
                value = await self.show(unit, prop)
                if matches(value):
                    return value
                if fail is not None and fail(value):
                    break
                await trio.sleep(POLL_INTERVAL)
        status = await self.systemctl("status", unit, check=False)
        raise AssertionError(
            f"{unit} {prop}={value!r}, waited {timeout} s for {expected!r}\n"
            f"{status.stdout.decode(errors='replace')}\n"
            f"--- {self.unit_log(unit)}:\n{_tail(self.unit_log(unit))}\n{self.diagnostics()}"
        )

    async def wait_active(self, unit: str, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until ``unit`` is active; fail at once if it failed."""
        await self.wait_property(
            unit, "ActiveState", "active", fail="failed".__eq__, timeout=timeout
        )


async def _kill_and_reap(proc: trio.Process) -> None:
    """SIGKILL a helper we started (if it still runs), close its pipes, reap it."""
    if proc.returncode is None:
        proc.kill()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()
    with trio.move_on_after(STOP_TIMEOUT):
        await proc.wait()
