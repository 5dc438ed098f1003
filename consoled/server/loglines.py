"""``logs --tail/--since/--until/--timestamps``: a session's output as lines with times.

Pure logic, no I/O: the daemon feeds it the output, wherever it comes from
(log files, the ring, live), with a way to tell the time of a line's first
byte (see :mod:`..io.timeindex`; a CRI record carries its own).

As ``docker logs`` does: ``--tail N`` takes the last N lines of what is
retained, then ``--since``/``--until`` keep those whose time is within the
range (both ends included), and ``--timestamps`` starts each line with its
time.  A line is what ends with a newline, and the unfinished last one; its
time is that of its first byte.  A line of unknown time (output from before
times were recorded) is left out by ``--since`` and kept by ``--until``, and
stamped with the zero time, as docker shows one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .cri import timestamp

#: What ``--timestamps`` shows for a line of unknown time (Go's zero time, as docker does).
UNKNOWN_TIME: Final = b"0001-01-01T00:00:00.000000000Z"

#: The time of the line that starts at an index of the data being fed (None: unknown).
TimeOf = Callable[[int], int | None]


class LineFilter:
    """Keeps the lines whose time is in ``[since, until]``, stamped if asked.

    Args:
        since: nanoseconds since the epoch, or None for no lower bound.
        until: the same, for the upper bound.
        timestamps: start each line with its time and a space.
        at_line_start: the first byte fed starts a line.
    """

    def __init__(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        timestamps: bool = False,
        at_line_start: bool = True,
    ) -> None:
        self.since = since
        self.until = until
        self.timestamps = timestamps
        self.at_line_start = at_line_start
        #: The line being fed is kept.
        self.keeping = True
        #: A line later than ``until`` was seen: no later one can be kept.
        self.done = False

    @property
    def passthrough(self) -> bool:
        """Every byte is kept as it is: there is nothing to do."""
        return self.since is None and self.until is None and not self.timestamps

    def skip(self, ends_line: bool) -> None:
        """Output was left out unread (all of it before ``since``): the next byte follows it."""
        self.at_line_start = ends_line
        self.keeping = False

    def feed(self, data: bytes, time_of: TimeOf) -> bytes:
        """The part of ``data`` to show.

        Args:
            data: the next output.
            time_of: the time of a line that starts at an index of ``data``.
        """
        if self.done or not data:
            return b""
        if self.passthrough:
            self.at_line_start = data.endswith(b"\n")
            return data
        out: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            if self.at_line_start:
                when = time_of(pos)
                if self.until is not None and when is not None and when > self.until:
                    self.done = True
                    break
                self.keeping = self.since is None or (when is not None and when >= self.since)
                if self.keeping and self.timestamps:
                    out.append((UNKNOWN_TIME if when is None else timestamp(when)) + b" ")
                self.at_line_start = False
            newline = data.find(b"\n", pos)
            end = size if newline < 0 else newline + 1
            if self.keeping:
                out.append(data[pos:end])
            if newline >= 0:
                self.at_line_start = True
            pos = end
        return b"".join(out)


class TailFinder:
    """Where the last N lines start, given the output backwards, newest first.

    The first byte given (the newest) ends the last line if it is a newline;
    every newline before it ends a line, and the N-th of those from the end
    is where the tail starts, just after it.
    """

    def __init__(self, lines: int) -> None:
        self.remaining = lines
        self._newest = True

    def back(self, data: bytes) -> int | None:
        """``data`` comes before all that was given so far: the index where the tail starts
        in it, or None if it starts further back."""
        end = len(data)
        if self._newest and data:
            self._newest = False
            if data.endswith(b"\n"):
                end -= 1  # the end of the last line: the lines are counted by those before it
        if self.remaining == 0:
            return len(data)
        while True:
            newline = data.rfind(b"\n", 0, end)
            if newline < 0:
                return None
            self.remaining -= 1
            if self.remaining == 0:
                return newline + 1
            end = newline

    def back_record(self, full: bool) -> bool:
        """A CRI record comes before all that was given so far (``full``: it ends a line).

        Returns:
            Whether the tail starts just after it.
        """
        newest, self._newest = self._newest, False
        if self.remaining == 0:
            return True
        if not full or newest:
            return False
        self.remaining -= 1
        return self.remaining == 0
