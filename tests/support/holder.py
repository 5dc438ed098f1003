"""Drive :mod:`tests.support.ptyholder` from trio: ptys whose slaves another process holds.

The holder stands in for containers: it opens ptys, hands the masters to the
daemon as a runtime does, keeps the slaves open, writes to them when told,
and reports whether any terminal hung up.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.lines import Lines
from tests.support.ptyholder import line

#: Seconds any holder command may take.
HOLDER_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parents[2]
PTY_MAX = "/proc/sys/kernel/pty/max"


@contextlib.contextmanager
def pty_headroom(extra: int) -> Iterator[None]:
    """Raise the kernel's pty limit for ``extra`` more ptys if needed; restore it after."""
    with open(PTY_MAX) as f:
        old = int(f.read())
    with open("/proc/sys/kernel/pty/nr") as f:
        used = int(f.read())
    want = used + extra + 2048
    if want > old:
        with open(PTY_MAX, "w") as f:
            f.write(str(want))
    try:
        yield
    finally:
        if want > old:
            with contextlib.suppress(OSError), open(PTY_MAX, "w") as f:
                f.write(str(old))


def streamed(index: int, lines: int) -> bytes:
    """What ``stream`` wrote to slave ``index`` when it wrote ``lines`` lines."""
    return b"".join(line(index, n) for n in range(1, lines + 1))


class PtyHolder:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None
        self._lines = Lines(proc.stdout, "the pty holder")

    @staticmethod
    def argv() -> list[str]:
        """The holder's command line (stdlib only, runnable from anywhere)."""
        return [sys.executable, str(ROOT / "tests" / "support" / "ptyholder.py")]

    @classmethod
    async def start(cls, nursery: trio.Nursery) -> PtyHolder:
        """Start the holder as a child of this process."""
        proc = await trio.lowlevel.open_process(
            cls.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
        )
        return cls(proc)

    async def send(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all("".join(line + "\n" for line in lines).encode())

    async def ask(self, line: str) -> str:
        with trio.fail_after(HOLDER_TIMEOUT):
            await self.send(line)
            return await self._lines.next()

    async def hand(self, paths: Sequence[str]) -> int:
        """Hand a master to each console socket; returns how many slaves it holds now."""
        with trio.fail_after(HOLDER_TIMEOUT):
            await self.send(*(f"hand {path}" for path in paths))
            answer = await self.ask("sync")
        assert answer.startswith("ok "), answer
        return int(answer.split()[1])

    async def say(self, index: int, text: str) -> None:
        assert await self.ask(f"say {index} {text}") == f"said {index}"

    async def stream(self, index: int, seconds: float, rate: float) -> None:
        """Start writing numbered lines to slave ``index`` (raw) for ``seconds``."""
        assert await self.ask(f"stream {index} {seconds} {rate}") == f"streaming {index}"

    async def wait_streams(self, within: float) -> dict[int, int]:
        """Wait until every stream has ended; the lines each wrote, by slave."""
        with trio.fail_after(within + HOLDER_TIMEOUT):
            answer = await self.ask(f"wait-streams {within}")
        assert answer.startswith("streamed"), answer
        return {int(i): int(n) for i, n in (item.split(":") for item in answer.split()[1:])}

    async def sink(self, index: int) -> None:
        """Make slave ``index`` raw and read (and discard) whatever is typed into it."""
        assert await self.ask(f"sink {index}") == f"sinking {index}"

    async def leave_unread(self, index: int) -> None:
        """Make slave ``index`` raw and never read it: typed input fills its buffer."""
        assert await self.ask(f"raw {index}") == f"raw {index}"

    async def drain(self, index: int, size: int, into: Path, within: float = 30.0) -> bytes:
        """Read what is typed into slave ``index``: ``size`` bytes, or what came ``within``."""
        answer = await self.ask(f"drain {index} {size} {within} {into}")
        assert answer.startswith("drained "), answer
        return into.read_bytes()

    async def hangups(self) -> int:
        answer = await self.ask("hangups")
        assert answer.startswith("hangups "), answer
        return int(answer.split()[1])

    async def wait_hangups(self, count: int, *, within: float) -> int:
        """Wait (poll(2) in the holder) until ``count`` terminals hung up; how many did."""
        answer = await self.ask(f"wait-hangups {count} {within}")
        assert answer.startswith("hangups "), answer
        return int(answer.split()[1])

    async def aclose(self) -> None:
        """Close every slave (their terminals hang up) and wait for the holder to exit."""
        with trio.CancelScope(shield=True):
            if self.proc.stdin is not None:
                await self.proc.stdin.aclose()
            with trio.move_on_after(HOLDER_TIMEOUT):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


async def running_session(daemon: DaemonProcess, holder: PtyHolder, name: str) -> None:
    """Make session ``name`` run on a pty whose slave ``holder`` holds (handed as runtimes do)."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(name)
    finally:
        await client.aclose()
    await holder.hand([path])
    await daemon.wait_event("session.running", session=name)
