"""A program under a real pseudo-terminal, driven from trio.

The child gets a new session with the pty slave as its controlling terminal,
so SIGWINCH reaches it when the test resizes the pty, as for a program in a
terminal emulator.  The test keeps its own slave fd to read the terminal
modes the child leaves behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import termios
from collections.abc import Sequence

import trio

EXPECT_TIMEOUT = 15.0
#: Bound on waiting for a client's terminal to go raw (it has no event to await).
RAW_TIMEOUT = 20.0
#: Bound on a client process exiting once it has been told to.
EXIT_TIMEOUT = 20.0


def _become_tty_leader() -> None:  # runs in the child between fork and exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProcess:
    def __init__(self, master: int, slave: int, proc: trio.Process) -> None:
        self.master = master
        self.slave = slave
        self.proc = proc
        self.output = bytearray()
        self._pos = 0
        self._changed = trio.Event()
        self.eof = False

    @classmethod
    async def spawn(
        cls,
        nursery: trio.Nursery,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        rows: int = 24,
        cols: int = 80,
        cwd: str | None = None,
    ) -> PtyProcess:
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.set_blocking(master, False)
        proc = await trio.lowlevel.open_process(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=_become_tty_leader,
            cwd=cwd,
        )
        self = cls(master, slave, proc)
        nursery.start_soon(self._reader)
        return self

    async def _reader(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self.master)
                except trio.ClosedResourceError:
                    return
                continue
            except OSError:
                data = b""
            if not data:
                self.eof = True
                self._changed.set()
                return
            self.output += data
            self._changed.set()
            self._changed = trio.Event()

    async def expect(
        self, pattern: bytes | re.Pattern[bytes], timeout: float = EXPECT_TIMEOUT
    ) -> bytes:
        """Wait for ``pattern`` in the output after the last match.

        Returns the text up to the end of the match.
        """
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        with trio.move_on_after(timeout):
            while True:
                match = regex.search(self.output, self._pos)
                if match:
                    text = bytes(self.output[self._pos : match.end()])
                    self._pos = match.end()
                    return text
                await self._changed.wait()
        raise AssertionError(
            f"{regex.pattern!r} not seen within {timeout} s; output after the last match:\n"
            f"{bytes(self.output[self._pos :])!r}"
        )

    async def wait_changed(self) -> None:
        """Wait until more output arrives (or the terminal closes)."""
        if not self.eof:
            await self._changed.wait()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def set_size(self, rows: int, cols: int) -> None:
        """Resize the terminal; the kernel sends SIGWINCH to the child."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def termios(self) -> list[object]:
        return termios.tcgetattr(self.slave)

    async def wait(self, timeout: float = EXPECT_TIMEOUT) -> int:
        with trio.fail_after(timeout):
            return await self.proc.wait()

    async def wait_eof(self, timeout: float = EXPECT_TIMEOUT) -> None:
        """Once the process has exited: wait until :attr:`output` has all it wrote
        (our end of the terminal is closed, so the reader sees it end)."""
        assert self.proc.returncode is not None, "the process still runs"
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1
        with trio.fail_after(timeout):
            while not self.eof:
                await self.wait_changed()

    def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        for fd in (self.master, self.slave):
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
        self.master = self.slave = -1


def is_raw(proc: PtyProcess) -> bool:
    lflag = proc.termios()[3]
    assert isinstance(lflag, int)
    return not lflag & termios.ICANON


async def wait_raw(proc: PtyProcess) -> None:
    """Wait until the client has put its terminal into raw mode.

    A change of terminal modes sends no notification, so this polls, bounded.
    """
    with trio.move_on_after(RAW_TIMEOUT):
        while not is_raw(proc):
            if proc.proc.poll() is not None:
                raise AssertionError(
                    f"attach exited {proc.proc.returncode}: {bytes(proc.output)!r}"
                )
            await trio.sleep(0.01)
        return
    raise AssertionError(f"attach not raw within {RAW_TIMEOUT} s: {bytes(proc.output)!r}")
