"""A session's terminal state in the daemon: its screen, fed lazily from the ring.

Draining the pty is the daemon's first duty, so the emulator
(:class:`~consoled.terminal.Screen`, about 10 ms per MB) never runs in step
with the output.  It is brought up to date from the session's ring only when
it is needed:

- when the output holds a terminal query (busybox ash asks for the cursor
  position at every prompt): a cheap inline scanner sees it, the screen is
  caught up to just after it, and the daemon answers, once, for the session
  (the attach client removes queries from what it writes, so the user's
  terminal never answers a second time);
- when a client attaches: the screen is caught up to the end and rendered;
- before the window size changes, so that output written at the old size is
  emulated at the old size.

If more output went by than the ring holds since the screen was last fed,
the screen skips it and is *approximate* until the program redraws (clear
screen, alternate screen switch); an attach says so.

The state is created the first time it is needed, and dropped after a while
unused (:meth:`SessionScreen.idle_for`), so a host of quiet sessions costs
no emulator memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from ..io.record import Record
from ..terminal import QueryScanner, Responder, Screen

#: Lines scrolled off the top kept for ``attach --history``.
HISTORY_LINES: Final = 500
#: A size to emulate before the session has one.
DEFAULT_SIZE: Final = (24, 80)


class SessionScreen:
    """The emulated screen of one session, and how far the output has been fed to it.

    Args:
        rows, cols: the window size (0 for unknown: 24x80 is emulated).
        start: the stream offset the screen starts at (the ring's oldest byte).
        clock: what "now" is for :meth:`idle_for` (the daemon's: trio's clock).
    """

    def __init__(
        self, rows: int, cols: int, start: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        rows, cols = (rows, cols) if rows and cols else DEFAULT_SIZE
        self.screen = Screen(rows, cols, history=HISTORY_LINES)
        self.responder = Responder(self.screen)
        if start:
            # What came before the ring is gone: approximate until the next redraw.
            self.responder.skip(start)
        #: Stream offset of the next byte the screen has to be fed.
        self.fed = start
        self._clock = clock
        self.used = clock()

    def idle_for(self, now: float) -> float:
        return now - self.used

    def catch_up(
        self, record: Record, upto: int | None = None, answer_from: int | None = None
    ) -> bytes:
        """Feed the screen from the ring up to stream offset ``upto`` (the end).

        Args:
            record: the session's ring.
            upto: feed up to here (default: everything read so far).
            answer_from: answer only the queries at or after this offset (those
                in the batch just read); older ones were answered when they were
                read, or never can be, and a late answer would be typed into
                whatever runs now.

        Returns:
            The answers, for the pty.
        """
        self.used = self._clock()
        end = record.end if upto is None else min(upto, record.end)
        if end <= self.fed:
            return b""
        first, chunks = record.read_from(self.fed)
        if first > self.fed:
            self.responder.skip(first - self.fed)  # gone from the ring: approximate
            self.fed = first
        answer_from = end if answer_from is None else answer_from
        answers = bytearray()
        for chunk in chunks:
            if self.fed >= end:
                break
            piece = chunk[: end - self.fed]
            # Split at answer_from: before it, the answers are dropped.
            cut = max(0, min(len(piece), answer_from - self.fed))
            if cut:
                self.responder.feed(piece[:cut])
            if cut < len(piece):
                answers += self.responder.feed(piece[cut:])
            self.fed += len(piece)
        return bytes(answers)

    def resize(self, record: Record, rows: int, cols: int) -> bytes:
        """The window changes: emulate what came before at the old size, then resize."""
        answers = self.catch_up(record)
        self.screen.resize(rows, cols)
        return answers

    def render(self, record: Record, history: int) -> tuple[bytes, bool]:
        """The current screen (and ``history`` lines above it), and whether it is approximate."""
        self.catch_up(record)
        return self.screen.render(history=history), self.screen.approximate


class QueryWatch:
    """The inline part: finds queries in each batch as it is read (cheap)."""

    def __init__(self) -> None:
        self._scanner = QueryScanner()

    def ends(self, data: bytes) -> list[int]:
        """Where in ``data`` each query it completes ends."""
        return [q.end for q in self._scanner.feed(data)]
