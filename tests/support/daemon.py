"""A real ``consoled serve`` process for the tests.

Readiness is awaited, not guessed: the daemon is started with
``$NOTIFY_SOCKET`` pointing at a datagram socket we hold, and says
``READY=1`` there once it serves, exactly as under systemd.  The socket stays
open for the daemon's life: after ``consoled reexec`` the successor's
``MAINPID=`` tells us which process is the daemon now.  The daemon runs
under :mod:`tests.support.reaper`, which adopts the successor, so its exit
status is still known.  Its JSON log lines are read as they come so a test
can await a specific event.

A test can also give the daemon a stderr that misbehaves (a pipe nobody
reads, a pipe whose reader is gone, a file under a size limit), or make
stderr "the journal" and read the native-protocol entries the daemon sends
to a datagram socket the test binds in journald's place.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import trio

from tests.support.journal import parse_entry, receive_entry

#: Seconds the daemon gets to become ready or to stop.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
#: Seconds the last lines of its stderr may take to be read after it exited.
LAST_LINES_TIMEOUT = 5.0

#: Where the daemon's stderr goes: ``read`` (a pipe whose lines the test
#: follows), ``unread`` (a pipe nobody reads until :meth:`DaemonProcess.read_stderr`),
#: ``closed`` (a pipe whose read end is closed before the daemon starts), or a
#: file, opened ``O_APPEND`` as systemd's ``StandardError=append:`` does.
Stderr = Literal["read", "unread", "closed"] | Path


class DaemonProcess:
    """One daemon, its log events, and its control socket path.

    Args:
        state_dir: the daemon's --state-dir.
        args: extra ``serve`` options.
        nofile: start the daemon with this (soft, hard) RLIMIT_NOFILE, or
            inherit ours when None.
        stderr: where its stderr goes (see :data:`Stderr`).
        fsize: start the daemon with this RLIMIT_FSIZE (bytes), or inherit ours.
        journal: make stderr look like the journal (``$JOURNAL_STREAM``) and
            receive the daemon's entries on a socket standing in for journald's;
            their ``MESSAGE`` lines become :attr:`events`.
        extra_env: more environment for the daemon alone (not for the CLI).
        wrapper: a command that runs the daemon (``systemd-socket-activate ...``).
        python: the interpreter that runs ``consoled serve`` (default: ours).
        user: run the daemon as this (uid, gid), with that user's groups
            (``setpriv --init-groups``); ``python`` must then be one the user
            can execute (the ``service_python`` fixture's), and ``state_dir``'s
            parent a directory the user can write.
    """

    def __init__(
        self,
        state_dir: Path,
        args: Sequence[str] = (),
        *,
        nofile: tuple[int, int] | None = None,
        extra_env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        stderr: Stderr = "read",
        fsize: int | None = None,
        journal: bool = False,
        python: Path | None = None,
        user: tuple[int, int] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.args = list(args)
        self.nofile = nofile
        self.extra_env = dict(extra_env or {})
        self.wrapper = list(wrapper)
        self.stderr = stderr
        self.fsize = fsize
        self.journal = journal
        self.python = str(python or sys.executable)
        self.user = user
        #: The journal entries received, field name to value.
        self.entries: list[dict[str, bytes]] = []
        self.events: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._changed = trio.Event()
        self._log_done = trio.Event()
        self._stderr_stream: trio.lowlevel.FdStream | None = None
        self._reading = stderr == "read"
        self.proc: trio.Process | None = None
        self.returncode: int | None = None
        #: The daemon's pid (a successor's after a reexec), from its MAINPID=.
        self.main_pid = 0
        #: Every READY=1 so far (one per start and per reexec).
        self.readies = 0
        self.notifications: list[str] = []
        self._notified = trio.Event()
        self._notify: trio.socket.SocketType | None = None

    @property
    def journal_socket(self) -> str:
        return str(self.state_dir) + ".journal"

    @property
    def control_socket(self) -> str:
        return str(self.state_dir / "control.sock")

    @property
    def console_socket(self) -> str:
        return str(self.state_dir / "console.sock")

    @property
    def pid(self) -> int:
        """The daemon's current pid (it changes with a reexec)."""
        assert self.main_pid
        return self.main_pid

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONSOLED_STATE_DIR"] = str(self.state_dir)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("JOURNAL_STREAM", None)  # ours, if the tests run under systemd
        return env

    @property
    def notify_path(self) -> str:
        return str(self.state_dir) + ".notify"

    async def _watch_notify(self) -> None:
        assert self._notify is not None
        try:
            while True:
                data = await self._notify.recv(65536)
                for line in data.decode(errors="replace").split("\n"):
                    self.notifications.append(line)
                    if line == "READY=1":
                        self.readies += 1
                    elif line.startswith("MAINPID="):
                        self.main_pid = int(line.partition("=")[2])
                self._notified.set()
                self._notified = trio.Event()
        finally:
            self._notify.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.notify_path)

    async def wait_ready(self, count: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until the daemon said READY=1 ``count`` times in all."""
        with trio.move_on_after(timeout):
            while self.readies < count:
                await self._notified.wait()
            return
        raise AssertionError(
            f"READY=1 seen {self.readies} times, not {count}, within {timeout} s; log:\n"
            + "".join(self.raw_stderr[-40:])
        )

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the daemon and wait until it says READY=1."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.notify_path)
        self._notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await self._notify.bind(self.notify_path)
        if self.user is not None:
            os.chown(self.notify_path, self.user[0], self.user[1])  # it may send there
        nursery.start_soon(self._watch_notify)
        env = self.env()
        env.update(self.extra_env)
        env["NOTIFY_SOCKET"] = self.notify_path
        as_user: list[str] = []
        if self.user is not None:
            uid, gid = self.user
            as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]
        argv = [
            sys.executable, str(Path(__file__).with_name("reaper.py")), *self.wrapper, *as_user,
            self.python, "-m", "consoled", "serve", "--state-dir", str(self.state_dir),
            *self.args,
        ]  # fmt: skip
        stderr = self._open_stderr()
        try:
            if self.journal:
                await self._bind_journal(nursery)
                st = os.fstat(stderr)
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
                argv += ["--journal-socket", self.journal_socket]
            nofile, fsize = self.nofile, self.fsize

            def set_limits() -> None:  # in the child, between fork and exec
                if nofile is not None:
                    resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
                if fsize is not None:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

            self.proc = await trio.lowlevel.open_process(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=None if nofile is None and fsize is None else set_limits,
                # Not the checkout: the daemon imports consoled as installed (or from
                # $PYTHONPATH, as a test that upgrades an installed copy sets it).
                cwd=self.state_dir.parent,
            )
        finally:
            os.close(stderr)
        if self.stderr == "read":
            nursery.start_soon(self._read_log)
        else:
            self._log_done.set()
        try:
            with trio.fail_after(START_TIMEOUT):
                async with trio.open_nursery() as race:

                    async def ready() -> None:
                        await self.wait_ready(1, START_TIMEOUT)
                        race.cancel_scope.cancel()

                    async def died() -> None:
                        assert self.proc is not None
                        rc = await self.proc.wait()
                        with trio.move_on_after(2):
                            await self._log_done.wait()  # the last lines of stderr
                        raise AssertionError(
                            f"daemon exited {rc} before it was ready; stderr:\n"
                            + "".join(self.raw_stderr)
                        )

                    race.start_soon(ready)
                    race.start_soon(died)
        except trio.TooSlowError:
            raise AssertionError(
                f"daemon not ready within {START_TIMEOUT} s; stderr:\n" + "".join(self.raw_stderr)
            ) from None
        if self._reading:
            # daemon.ready is logged before READY=1 is sent, but written by
            # the daemon's log thread: it may come a little later.
            await self.wait_event("daemon.ready", START_TIMEOUT)

    def _open_stderr(self) -> int:
        """The fd to give the daemon as stderr; a pipe's read end is kept as a stream."""
        if isinstance(self.stderr, Path):
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            return os.open(self.stderr, flags, 0o600)
        r, w = os.pipe()
        if self.stderr == "closed":
            os.close(r)
        else:
            self._stderr_stream = trio.lowlevel.FdStream(r)
        return w

    async def read_stderr(self, nursery: trio.Nursery) -> None:
        """Start reading an ``unread`` stderr pipe (what the daemon still has to say)."""
        assert self.stderr == "unread" and self._stderr_stream is not None
        self._log_done = trio.Event()
        self._reading = True
        nursery.start_soon(self._read_log)

    async def _bind_journal(self, nursery: trio.Nursery) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_socket)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            await sock.bind(self.journal_socket)
        except BaseException:
            sock.close()
            raise
        nursery.start_soon(self._read_journal, sock)

    async def _read_journal(self, sock: trio.socket.SocketType) -> None:
        with sock:
            try:
                while True:
                    fields = parse_entry((await receive_entry(sock)).data)
                    self.entries.append(fields)
                    text = fields.get("MESSAGE", b"").decode(errors="replace")
                    self._add_line(text)
                    self._changed.set()
                    self._changed = trio.Event()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.journal_socket)

    async def _read_log(self) -> None:
        try:
            await self._read_lines()
        finally:
            self._log_done.set()

    async def _read_lines(self) -> None:
        assert self._stderr_stream is not None
        async with self._stderr_stream as stream:
            buf = b""
            async for chunk in stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    self.raw_stderr.append(text + "\n")
                    self._add_line(text)
                self._changed.set()
                self._changed = trio.Event()

    def _add_line(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            event = {"event": "<unparsed>", "text": text}
        self.events.append(event)

    def find(self, event: str, **match: object) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]  # fmt: skip

    async def wait_event(
        self, event: str, timeout: float = 15.0, count: int = 1, **match: object
    ) -> dict[str, Any]:
        """Wait until ``count`` log events named ``event`` with these fields were logged."""
        with trio.move_on_after(timeout):
            while len(self.find(event, **match)) < count:
                await self._changed.wait()
            return self.find(event, **match)[count - 1]
        raise AssertionError(
            f"no {event} {match} within {timeout} s; events so far:\n"
            + "".join(self.raw_stderr[-40:])
        )

    def internal_errors(self) -> list[dict[str, Any]]:
        return [
            e for e in self.events
            if e.get("event", "").endswith("internal_error") or e.get("event") == "session.failed"
            or e.get("event") == "<unparsed>"
        ]  # fmt: skip

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon (the current one, after a reexec)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it to exit; kill it if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.send_signal(sig)
        try:
            with trio.move_on_after(STOP_TIMEOUT):
                self.returncode = await self.proc.wait()
            if self.returncode is None:
                self.send_signal(signal.SIGKILL)
                self.proc.kill()
                await self.proc.wait()
                raise AssertionError(f"daemon did not stop within {STOP_TIMEOUT} s of {sig}")
            with trio.move_on_after(LAST_LINES_TIMEOUT):
                await self._log_done.wait()  # what it wrote last, read after its exit
            return self.returncode
        finally:
            if self.stderr == "unread" and not self._reading and self._stderr_stream is not None:
                await self._stderr_stream.aclose()
