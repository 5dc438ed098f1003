"""Lines from a helper process's stdout (the test helpers' answers)."""

from __future__ import annotations

import trio


class Lines:
    """Reads ``stream`` a line at a time.

    Args:
        stream: the process's stdout.
        who: names the process when it exits before a whole line came.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, who: str) -> None:
        self.stream = stream
        self.who = who
        self._buf = b""

    async def next(self) -> str:
        """The next line, without its newline."""
        while b"\n" not in self._buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"{self.who} exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()
