"""A container's terminal seen three ways: raw, through consoled, through conmon.

Every scenario runs the same container under each *console*:

- ``raw``: a minimal receiver takes the master over ``--console-socket`` and
  reads and writes it directly: the physical limit of the pty.
- ``consoled``: a session of the daemon under test; clients attach through
  the control protocol (the blocking client of ``consoled.client.conn``).
- ``conmon``: Debian's conmon runs ``runc create``; clients use its attach
  socket (SOCK_SEQPACKET, one pipe byte before the data of each packet) and
  resize through its ``ctl`` FIFO.

Clients are *taps* (:mod:`benchmarks.taps`).
"""

from __future__ import annotations

import abc
import contextlib
import os
import subprocess
from pathlib import Path

import trio

from consoled.client.conn import Client
from consoled.io.fdpass import receive_master
from consoled.io.listener import Listener
from consoled.protocol import events as ev
from tests.support.runtime import Runtime

from .taps import RECV_TIMEOUT, ConmonTap, ConsoledTap, FramedTap, RawTap, Tap, set_winsize

#: Seconds conmon gets to create its container.
CONMON_CREATE_TIMEOUT = 30.0


class Console(abc.ABC):
    """A created (not yet started) container and the way its terminal is reached."""

    kind: str

    def __init__(self, runtime: Runtime, cid: str) -> None:
        self.runtime = runtime
        self.cid = cid
        self.taps: list[Tap] = []

    @abc.abstractmethod
    def open_tap(self) -> Tap:
        """Attach one more client (blocking; call from a thread)."""

    @abc.abstractmethod
    def resize(self, rows: int, cols: int) -> None:
        """Ask for a new window size (blocking)."""

    def request_resize(self, rows: int, cols: int) -> None:
        """Ask for a new window size; :meth:`resize_answered` waits for any answer."""
        self.resize(rows, cols)

    def resize_answered(self) -> None:  # noqa: B027 - only consoled answers
        """Wait for the answer to :meth:`request_resize`, if the console gives one."""

    @property
    def broker_pid(self) -> int | None:
        """The process that moves the bytes, when it is not us."""
        return None

    async def start(self) -> None:
        await self.runtime.start(self.cid)

    async def container_pid(self) -> int:
        pid = (await self.runtime.state(self.cid))["pid"]
        assert isinstance(pid, int)
        return pid

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for tap in self.taps:
                tap.close()
            await self.runtime.delete(self.cid)
            self.runtime.started.remove(self.cid)


class RawConsole(Console):
    kind = "raw"

    def __init__(self, runtime: Runtime, cid: str, fd: int) -> None:
        super().__init__(runtime, cid)
        self.fd = fd

    @classmethod
    async def create(cls, runtime: Runtime, cid: str, bundle: Path, sock_path: Path) -> RawConsole:
        listener = Listener.bind(sock_path, "raw", backlog=1)
        received: list[int] = []

        async def take() -> None:
            await trio.lowlevel.wait_readable(listener.sock)
            accepted = listener.accept_now()
            assert accepted is not None
            conn = trio.socket.from_stdlib_socket(accepted)
            with conn:
                holder, _, _ = await receive_master(conn)
            received.append(holder.release())

        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take)
                    await runtime.create(cid, bundle, os.fspath(sock_path))
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)
        fd = received[0]
        os.set_blocking(fd, False)
        return cls(runtime, cid, fd)

    def open_tap(self) -> Tap:
        assert not self.taps, "the raw receiver has one reader: the master itself"
        tap = RawTap(self.fd)
        self.taps.append(tap)
        return tap

    def resize(self, rows: int, cols: int) -> None:
        set_winsize(self.fd, rows, cols)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            os.close(self.fd)


class ConsoledConsole(Console):
    kind = "consoled"

    def __init__(self, runtime: Runtime, cid: str, control_socket: str, daemon_pid: int) -> None:
        super().__init__(runtime, cid)
        self.control_socket = control_socket
        self.daemon_pid = daemon_pid
        self._control: Client | None = None

    @classmethod
    async def create(
        cls, runtime: Runtime, cid: str, bundle: Path, control_socket: str, daemon_pid: int
    ) -> ConsoledConsole:
        def create_socket() -> str:
            with Client(control_socket) as client:
                return client.call(ev.CreateSocket(cid), ev.SocketCreated).path

        path = await trio.to_thread.run_sync(create_socket)
        console = cls(runtime, cid, control_socket, daemon_pid)
        await runtime.create(cid, bundle, path)
        return console

    @property
    def broker_pid(self) -> int:
        return self.daemon_pid

    def control(self) -> Client:
        """A control connection kept for requests (resize)."""
        if self._control is None:
            self._control = Client(self.control_socket)
        return self._control

    def open_tap(self, *, replay: int | None = None, framed: bool = False) -> ConsoledTap:
        """An attached client (``framed``: one that reads and writes stream
        data as a lean client would, see :class:`.FramedTap`)."""
        client = Client(self.control_socket, timeout=RECV_TIMEOUT)
        try:
            client.call(ev.Attach(self.cid, replay=replay), ev.Attached)
        except BaseException:
            client.close()
            raise
        tap = FramedTap(client) if framed else ConsoledTap(client)
        self.taps.append(tap)
        return tap

    def resize(self, rows: int, cols: int) -> None:
        self.control().call(ev.Resize(self.cid, rows, cols), ev.Resized)

    def request_resize(self, rows: int, cols: int) -> None:
        self.control().send(ev.Resize(self.cid, rows, cols))

    def resize_answered(self) -> None:
        self.control().expect_typed(ev.Resized)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            with trio.CancelScope(shield=True):

                def remove() -> None:
                    with Client(self.control_socket) as client:
                        client.call(ev.Remove(self.cid, force=True), ev.Removed)

                with contextlib.suppress(Exception):
                    await trio.to_thread.run_sync(remove)
                if self._control is not None:
                    self._control.close()


class ConmonConsole(Console):
    kind = "conmon"

    def __init__(
        self, runtime: Runtime, cid: str, bundle: Path, proc: trio.Process, workdir: Path
    ) -> None:
        super().__init__(runtime, cid)
        self.bundle = bundle
        self.proc = proc
        self.workdir = workdir
        self._ctl: int | None = None

    @classmethod
    async def create(
        cls, runtime: Runtime, cid: str, bundle: Path, workdir: Path, conmon: str
    ) -> ConmonConsole:
        """Run conmon (``--sync``: it stays our child) and wait until runc created the container."""
        os.makedirs(workdir / "sock", exist_ok=True)
        pidfile = workdir / "pid"
        argv = [
            conmon, "--api-version", "1", "-c", cid, "-u", cid,
            "-r", "/usr/sbin/runc", "--runtime-arg", "--root", "--runtime-arg", str(runtime.root),
            "-b", str(bundle), "-p", str(pidfile), "-l", f"k8s-file:{workdir / 'ctr.log'}",
            "--exit-dir", str(workdir), "--socket-dir-path", str(workdir / "sock"),
            "-t", "--sync",
        ]  # fmt: skip
        err = os.open(workdir / "conmon.stderr", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        finally:
            os.close(err)
        runtime.started.append(cid)
        console = cls(runtime, cid, bundle, proc, workdir)
        try:
            with trio.fail_after(CONMON_CREATE_TIMEOUT):
                while not (pidfile.exists() and (bundle / "attach").exists()):
                    if proc.returncode is not None:
                        raise RuntimeError(
                            f"conmon exited {proc.returncode}: "
                            + (workdir / "conmon.stderr").read_text(errors="replace")
                        )
                    await trio.sleep(0.005)
        except BaseException:
            await console.aclose()
            raise
        return console

    @property
    def broker_pid(self) -> int:
        return self.proc.pid

    def open_tap(self) -> Tap:
        tap = ConmonTap(self.bundle / "attach")
        self.taps.append(tap)
        return tap

    def resize(self, rows: int, cols: int) -> None:
        if self._ctl is None:
            self._ctl = os.open(self.bundle / "ctl", os.O_WRONLY | os.O_CLOEXEC)
        os.write(self._ctl, f"1 {rows} {cols}\n".encode())

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            with trio.CancelScope(shield=True):
                if self._ctl is not None:
                    os.close(self._ctl)
                    self._ctl = None
                with trio.move_on_after(5):
                    await self.proc.wait()
                if self.proc.returncode is None:
                    self.proc.kill()
                    await self.proc.wait()
