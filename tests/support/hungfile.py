"""Put a file that can stop answering reads over any file: see :mod:`.hangfs`."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from tests.support.holder import ROOT
from tests.support.lines import Lines

#: Seconds the FUSE server gets to mount, or to answer a command.
TIMEOUT = 10.0


class HungFile:
    """The FUSE server's controls (its file is bind-mounted over a path)."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self._lines = Lines(proc.stdout, "the FUSE server")

    async def _expect(self, prefix: str) -> str:
        """The next line that starts with ``prefix`` (reads said meanwhile are passed over)."""
        with trio.fail_after(TIMEOUT):
            while True:
                line = await self._lines.next()
                if line.startswith(prefix):
                    return line

    async def _command(self, word: str, answer: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(word.encode() + b"\n")
        await self._expect(answer)

    async def hang(self) -> None:
        """Reads wait from now on."""
        await self._command("hang", "hung")

    async def serve(self) -> None:
        """Answer the reads held, and every read from now on."""
        await self._command("serve", "serving")

    async def held_read(self) -> str:
        """Wait until somebody's read is held; the server's line for it."""
        return await self._expect("read ")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


@contextlib.asynccontextmanager
async def hung_file(base: Path, over: Path, content: bytes) -> AsyncIterator[HungFile]:
    """A file holding ``content`` mounted over ``over`` (a file that exists).

    On the way out everything is unmounted and the server killed: reads it
    still holds fail (the connection is gone), so nothing waits for ever.
    """
    mountpoint = base / "hangfs"
    mountpoint.mkdir()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.support.hangfs", str(mountpoint), content.decode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    hung = HungFile(proc)
    bound = False
    try:
        await hung._expect("mounted")
        with trio.fail_after(TIMEOUT):
            await trio.run_process(["mount", "--bind", str(mountpoint / "data"), str(over)])
        bound = True
        yield hung
    finally:
        with trio.CancelScope(shield=True):
            if bound:
                _umount(over)
            proc.kill()  # first: the reads it holds fail, and the unmount does not wait
            await proc.wait()
            _umount(mountpoint)
