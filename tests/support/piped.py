"""A ``consoled`` command running beside a test on pipes, its output collected as it comes.

For the commands a test starts and leaves running (``attach --no-tty``,
``logs -f``, ``exec``) while it restarts the daemon or feeds the session:
the test waits for what it expects on stdout, types on stdin, and the
process is killed and reaped however the test ends.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence

import trio

from tests.support.daemon import DaemonProcess

#: Bound on waiting for output, and for the process's pipes to close once it is killed.
PIPED_TIMEOUT = 60.0


async def kill_and_reap(proc: trio.Process) -> None:
    """Kill a process the test started (if it still runs), reap it, close its pipes;
    even while the test is being cancelled."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(PIPED_TIMEOUT):
            await proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                await pipe.aclose()


class StalledReader:
    """A command whose output the test reads only when it says so, as ``| less``
    on its first page: the pipe and the socket behind it fill, and it waits."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = bytearray()

    async def read_some(self) -> None:
        assert self.proc.stdout is not None
        self.out += await self.proc.stdout.receive_some()

    async def read_to_end(self) -> bytes:
        """Read the rest of its output; returns its stderr, once it exited 0."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        async for chunk in self.proc.stdout:
            self.out += chunk
        err = b"".join([chunk async for chunk in self.proc.stderr])
        assert await self.proc.wait() == 0, err
        return err


@contextlib.asynccontextmanager
async def stalled_reader(
    argv: Sequence[str], env: Mapping[str, str]
) -> AsyncIterator[StalledReader]:
    """Start ``argv``, read its first output (it runs), and leave the rest unread
    until the test reads it; killed and reaped however the block ends."""
    proc = await trio.lowlevel.open_process(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        reader = StalledReader(proc)
        with trio.fail_after(PIPED_TIMEOUT):
            await reader.read_some()
        yield reader
    finally:
        await kill_and_reap(proc)


class PipedCli:
    """One ``python -m consoled ARGS`` process: its stdin, and what it wrote so far."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.out = bytearray()
        self.err = bytearray()
        self._changed = trio.Event()
        self._open = 2  # stdout and stderr, until each reaches its end
        self._closed = trio.Event()

    async def _collect(self, stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        try:
            async for chunk in stream:
                into += chunk
                self._changed.set()
                self._changed = trio.Event()
        finally:
            self._open -= 1
            if not self._open:
                self._closed.set()

    async def wait_for(
        self,
        pattern: bytes | re.Pattern[bytes],
        *,
        stderr: bool = False,
        timeout: float = PIPED_TIMEOUT,
    ) -> None:
        """Wait until stdout (or stderr) holds ``pattern``."""
        text = self.err if stderr else self.out

        def found() -> bool:
            if isinstance(pattern, bytes):
                return pattern in text
            return pattern.search(text) is not None

        with trio.fail_after(timeout):
            while not found():
                await self._changed.wait()

    async def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data)

    async def wait(self, timeout: float = PIPED_TIMEOUT) -> int:
        """The exit status, once the process has ended by itself."""
        with trio.fail_after(timeout):
            return await self.proc.wait()

    async def killed(self) -> bytes:
        """Kill it, reap it, and return everything it said on stderr."""
        self.proc.kill()
        with trio.fail_after(PIPED_TIMEOUT):
            await self.proc.wait()
            await self._closed.wait()
        return bytes(self.err)


@contextlib.asynccontextmanager
async def piped_cli(
    daemon: DaemonProcess, nursery: trio.Nursery, *args: str
) -> AsyncIterator[PipedCli]:
    """Run ``consoled ARGS`` against ``daemon`` until the block ends (then it is killed)."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "consoled", *args],
        env=daemon.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    piped = PipedCli(proc)
    nursery.start_soon(piped._collect, proc.stdout, piped.out)
    nursery.start_soon(piped._collect, proc.stderr, piped.err)
    try:
        yield piped
    finally:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            with trio.move_on_after(PIPED_TIMEOUT):
                await piped._closed.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                await pipe.aclose()
