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
screen, alternate screen switch); an attach says so.  So it does with output
that takes too long to emulate: every catch-up is bounded in time (the
budget on the draining path, :data:`RENDER_TIME` for an attach), not only in
bytes, because a program can print output that costs the emulator every
cell of the screen per byte (whole-screen scrolls, DECALN), thousands of
times what text costs.

The state is created the first time it is needed, and frozen to its render
after a while unused (:meth:`SessionScreen.freeze`), so a host of quiet
sessions costs a few KiB each for it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Final, NamedTuple

import structlog
import trio

from ..io.record import Record
from ..terminal import QueryScanner, Responder, Screen, join_render

#: Most lines of history an attach can ask for (they are emulated anew from the ring).
MAX_HISTORY: Final = 2000
#: Attaches' histories emulated at once; more wait their turn (each takes up
#: to :data:`RENDER_TIME` of the event loop, a piece at a time).
HISTORY_AT_ONCE: Final = 2
#: A size to emulate before the session has one.
DEFAULT_SIZE: Final = (24, 80)

log = structlog.get_logger("consoled.screen")

#: Seconds an attach (or a resize) may spend catching a screen up: output
#: that costs more to emulate is skipped, and the screen is approximate.
#: About 20 MB of ordinary output, more than the largest rings hold.
RENDER_TIME: Final = 0.2
#: The part of the daemon's time that catching screens up for attaches and
#: resizes may take over time (one may take all of RENDER_TIME at once): a
#: client attaching again and again to output slow to emulate gets an
#: approximate screen, and the other consoles keep three quarters of the time.
RENDER_SHARE: Final = 0.25
#: Seconds each piece fed to the emulator should take; pieces are sized by
#: what the last one cost, from :data:`FIRST_PIECE` bytes up to
#: :data:`MAX_PIECE`.  Output costs 10 ns a byte to emulate, or 5 us (24x80)
#: to 50 us (100x300) a byte when it is all full-screen operations (scrolls,
#: DECALN), which a program can print on purpose: a piece must not be a
#: megabyte of those.
PIECE_TIME: Final = 0.001
FIRST_PIECE: Final = 64
MAX_PIECE: Final = 64 * 1024
#: Bytes always fed, however long it takes: the newest (a query being answered).
MIN_TAIL: Final = 64


def _fault(message: str) -> None:
    """The emulator panicked; the screen started again (see consoled.terminal.screen)."""
    log.error("screen.emulator_failed", error=message)


class EmulationBudget:
    """How much of the daemon's time emulators may take on the draining path.

    Queries make the pump catch a screen up; a flood of output with queries
    in it would make draining as slow as emulating (about as fast as a pty
    drains). The budget refills at ``share`` seconds per second, up to
    ``burst``; a catch-up that costs more than what is left skips the older
    output instead (the answers then come from an approximate screen, which is
    right again at the program's next redraw).

    Args:
        share: the part of wall time emulation may take, over time (2%: the
            pump of a pty draining flat out takes about half a core, so this
            is a few percent of its work).
        burst: seconds of emulation that may be spent at once (20 ms: about
            2 MB, four times the default ring).
        clock: seconds, monotonic.
    """

    #: Bytes always affordable: the query itself, and a little before it.
    MIN_BYTES: Final = MIN_TAIL

    def __init__(
        self,
        share: float = 0.02,
        burst: float = 0.02,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.share = share
        self.burst = burst
        self._clock = clock
        self._left = burst
        self._at = clock()
        self._per_byte = 10e-9  # measured as it goes: about 10 ms per MB
        #: Bytes skipped for want of budget (for the logs and tests).
        self.skipped = 0

    def affordable(self) -> int:
        """Bytes that may be fed now (as output usually costs)."""
        return max(self.MIN_BYTES, int(self.seconds() / self._per_byte))

    def seconds(self) -> float:
        """Seconds of emulation that may be spent now."""
        now = self._clock()
        self._left = min(self.burst, self._left + (now - self._at) * self.share)
        self._at = now
        return max(self._left, 0.0)

    def spent(self, nbytes: int, seconds: float) -> None:
        self._left -= seconds
        if nbytes >= 4096:
            self._per_byte = 0.8 * self._per_byte + 0.2 * (seconds / nbytes)


class ScreenHandover(NamedTuple):
    """A screen as one daemon hands it to its successor (see :meth:`SessionScreen.handover`)."""

    #: Stream offset of the next byte the screen has to be fed.
    fed: int
    approximate: bool
    rows: int
    cols: int
    render: bytes


class SessionScreen:
    """The emulated screen of one session, and how far the output has been fed to it.

    A live screen costs about 100 KiB (avt's cells); an idle one is *frozen*
    (:meth:`freeze`) to its render, a few KiB, and thawed from it when next
    used: cells, cursor, modes, tab stops, saved cursors and character sets
    survive. History is not kept: ``attach --history`` emulates the ring anew
    (:meth:`render`, between the event loop's other work), so a screen's size
    does not grow with its output.

    Args:
        rows, cols: the window size (0 for unknown: 24x80 is emulated).
        start: the stream offset the screen starts at (the ring's oldest byte).
        clock: what "now" is for :meth:`idle_for` (the daemon's: trio's clock).
    """

    def __init__(
        self, rows: int, cols: int, start: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        rows, cols = (rows, cols) if rows and cols else DEFAULT_SIZE
        self._screen: Screen | None = Screen(rows, cols, history=0, on_fault=_fault)
        self._frozen: tuple[bytes, bool] | None = None
        self._size = (rows, cols)
        self.responder = Responder(self._screen)
        if start:
            # What came before the ring is gone: approximate until the next redraw.
            self.responder.skip(start)
        #: Stream offset of the next byte the screen has to be fed.
        self.fed = start
        self._clock = clock
        self.used = clock()

    @property
    def screen(self) -> Screen:
        """The emulator, thawed if it was frozen."""
        if self._screen is None:
            assert self._frozen is not None
            render, approximate = self._frozen
            self._screen = Screen.from_render(
                *self._size, render, approximate=approximate, on_fault=_fault
            )
            self._frozen = None
            self.responder.screen = self._screen
        return self._screen

    @property
    def frozen(self) -> bool:
        return self._screen is None

    def freeze(self, record: Record) -> bool:
        """Keep only the render (the screen is unused): a few KiB instead of about 100.

        Only where the output fed so far ends clean (no escape sequence or
        character cut short, which the emulator holds and a render cannot
        carry); otherwise nothing is done, and False returned: try later.
        """
        screen = self._screen
        if screen is None:
            return True
        if self.fed > record.start:
            first, chunks = record.read_from(max(record.start, self.fed - CLEAN_LOOKBACK))
            tail = b"".join(chunks)[: self.fed - first]
            if not ends_clean(tail):
                return False
        self._frozen = (screen.render(), screen.approximate)
        self._size = (screen.rows, screen.cols)
        self._screen = None
        return True

    def handover(self, record: Record) -> ScreenHandover | None:
        """The screen as a successor takes it over (frozen), or None if it cannot be.

        A successor that rebuilt the screen from the ring would only have the
        ring's output (the screen approximate, once the ring wrapped): it is
        given the render as of :attr:`fed` instead, and goes on from there.
        """
        if not self.freeze(record):
            return None  # the output fed so far ends inside a sequence: rebuilt from the ring
        assert self._frozen is not None
        render, approximate = self._frozen
        return ScreenHandover(self.fed, approximate, *self._size, render)

    @classmethod
    def taken_over(
        cls, state: ScreenHandover, clock: Callable[[], float] = time.monotonic
    ) -> SessionScreen:
        """A predecessor's screen (see :meth:`handover`), frozen, going on from its offset."""
        screen = cls(state.rows, state.cols, 0, clock)
        screen._frozen = (state.render, state.approximate)
        screen._screen = None
        screen.fed = state.fed
        return screen

    def idle_for(self, now: float) -> float:
        return now - self.used

    def catch_up(
        self,
        record: Record,
        upto: int | None = None,
        answer_from: int | None = None,
        budget: EmulationBudget | None = None,
        seconds: float = RENDER_TIME,
    ) -> bytes:
        """Feed the screen from the ring up to stream offset ``upto`` (the end).

        Args:
            record: the session's ring.
            upto: feed up to here (default: everything read so far).
            answer_from: answer only the queries at or after this offset (those
                in the batch just read); older ones were answered when they were
                read, or never can be, and a late answer would be typed into
                whatever runs now.
            budget: on the draining path, how much emulating it may cost: what
                it cannot afford is skipped (the screen is then approximate).
            seconds: otherwise, how long it may take emulating (the rest is
                skipped, the screen approximate).

        Returns:
            The answers, for the pty.
        """
        self.used = self._clock()
        end = record.end if upto is None else min(upto, record.end)
        if end <= self.fed:
            return b""
        responder = self.responder
        responder.screen = self.screen
        start = self.fed
        began = time.perf_counter()
        if budget is not None:
            start = max(start, end - budget.affordable())
            budget.skipped += max(0, start - max(self.fed, record.start))
            seconds = budget.seconds()
        first, chunks = record.read_from(start)
        if first > self.fed:
            # Gone from the ring, or more than the budget allows: approximate.
            responder.skip(first - self.fed)
            self.fed = first
        answer_from = end if answer_from is None else answer_from
        answers = bytearray()

        def feed(piece: bytes, at: int) -> None:
            # Split at answer_from: before it, the answers are dropped.
            cut = max(0, min(len(piece), answer_from - at))
            if cut:
                responder.feed(piece[:cut])
            if cut < len(piece):
                answers.extend(responder.feed(piece[cut:]))

        fed, skipped = feed_within(
            feed, responder.skip, chunks, first, end, seconds=seconds, tail=MIN_TAIL
        )
        self.fed = end  # the chunks reach the ring's end, at or past ``end``
        if skipped:
            log.debug("screen.skipped", bytes=skipped, why="it took too long to emulate")
        if budget is not None:
            budget.skipped += skipped
            budget.spent(fed, time.perf_counter() - began)
        return bytes(answers)

    def _catch_up_within(self, record: Record, budget: EmulationBudget | None) -> bytes:
        """:meth:`catch_up` for an attach or a resize: for at most what ``budget``
        has left of :data:`RENDER_TIME` (all of it without one)."""
        if budget is None:
            return self.catch_up(record)
        began = time.perf_counter()
        answers = self.catch_up(record, seconds=budget.seconds())
        budget.spent(0, time.perf_counter() - began)  # time only: costs vary by session
        return answers

    def resize(
        self, record: Record, rows: int, cols: int, budget: EmulationBudget | None = None
    ) -> bytes:
        """The window changes: emulate what came before at the old size, then resize.

        Args:
            budget: what the emulating may cost, in time (see :meth:`render`).
        """
        answers = self._catch_up_within(record, budget)
        self.screen.resize(rows, cols)
        self._size = (rows, cols)
        return answers

    def render(
        self, record: Record, history: int = 0, budget: EmulationBudget | None = None
    ) -> ScreenRender:
        """The current screen, drawn now, and ``history`` lines to put above it.

        The history is emulated anew from the ring as it is now, by
        :meth:`ScreenRender.finish`: a piece at a time, between the event
        loop's other work (emulating a ring of full-screen operations takes
        the whole :data:`RENDER_TIME`, and many clients could ask at once).

        Args:
            budget: what catching the screen up may cost, in time (the rest
                is skipped: the screen is approximate).
        """
        self._catch_up_within(record, budget)
        screen = self.screen
        head, body, rows = screen.render_parts()
        job = None
        if history > 0:
            first, chunks = record.read_from(record.start)
            lines = min(history, MAX_HISTORY)
            job = partial(_history, self._size, lines, first, chunks, self.fed)
        return ScreenRender(head, body, rows, screen.approximate, job)


class ScreenRender:
    """An attach's screen: the current one, drawn, and the history above it, to emulate.

    Args:
        head, body, rows: the current screen's render (see :meth:`.Screen.render_parts`).
        approximate: the screen may differ from the program's.
        history: emulates the history lines (see :meth:`SessionScreen.render`).
    """

    __slots__ = ("_body", "_head", "_history", "_rows", "approximate")

    def __init__(
        self,
        head: bytes,
        body: bytes,
        rows: int,
        approximate: bool,
        history: Callable[[], Awaitable[bytes]] | None,
    ) -> None:
        self._head, self._body, self._rows = head, body, rows
        self.approximate = approximate
        self._history = history

    @property
    def drawn(self) -> bytes:
        """The render, when no history was asked for (else see :meth:`finish`)."""
        if self._history is not None:
            raise ValueError("the history is still to be emulated: await finish()")
        return self._head + self._body

    async def finish(self) -> bytes:
        """The render, with the history above the screen: emulated now, when at most
        :data:`HISTORY_AT_ONCE` others are."""
        above = b""
        if self._history is not None:
            async with _history_turns():
                above = await self._history()
        return join_render(self._head, above, self._rows, self._body)


_TURNS: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("history_turns")


def _history_turns() -> trio.CapacityLimiter:
    try:
        return _TURNS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(HISTORY_AT_ONCE)
        _TURNS.set(limiter)
        return limiter


async def _history(
    size: tuple[int, int], lines: int, first: int, chunks: list[bytes], end: int
) -> bytes:
    """The last ``lines`` lines scrolled off by the output in ``chunks`` (from
    ``first``) up to ``end``, emulated anew at this size, a piece at a time."""
    again = Screen(*size, history=lines, on_fault=_fault)
    if first:
        again.skip(first)
    feeding = _feeding(
        lambda piece, _at: again.feed(piece), again.skip, chunks, first, end, seconds=RENDER_TIME
    )
    while True:
        try:
            next(feeding)
        except StopIteration as done:
            _, skipped = done.value
            break
        await trio.lowlevel.checkpoint()  # the rest of the daemon runs between pieces
    # Output skipped for time would leave a gap between the history and the
    # screen: none rather than the wrong lines.
    return b"" if skipped else again.history(lines)


def feed_within(
    feed: Callable[[bytes, int], object],
    skip: Callable[[int], object],
    chunks: list[bytes],
    first: int,
    end: int,
    *,
    seconds: float,
    tail: int = 0,
) -> tuple[int, int]:
    """Feed an emulator the output in ``chunks`` (from stream offset ``first``) up to
    ``end``, in pieces of about :data:`PIECE_TIME` each; once feeding has taken
    ``seconds``, skip to the last ``tail`` bytes.

    Args:
        feed: takes a piece and its stream offset.
        skip: takes a count of bytes skipped.

    Returns:
        The bytes fed and the bytes skipped.
    """
    feeding = _feeding(feed, skip, chunks, first, end, seconds=seconds, tail=tail)
    while True:
        try:
            next(feeding)
        except StopIteration as done:
            result: tuple[int, int] = done.value
            return result


def _feeding(
    feed: Callable[[bytes, int], object],
    skip: Callable[[int], object],
    chunks: list[bytes],
    first: int,
    end: int,
    *,
    seconds: float,
    tail: int = 0,
) -> Generator[None, None, tuple[int, int]]:
    """:func:`feed_within`, pausing after each piece (see :func:`_history`)."""
    at, size, fed, skipped, spent = first, FIRST_PIECE, 0, 0, 0.0
    offset = first  # of the chunk's first byte
    for chunk in chunks:
        view = memoryview(chunk)
        stop = min(offset + len(chunk), end)
        while at < stop:
            if at < end - tail and spent > seconds:
                # One skip to the tail, however many chunks it passes over.
                jump = end - tail - at
                skip(jump)
                skipped += jump
                at += jump
                continue
            piece = bytes(view[at - offset : min(at + size, stop) - offset])
            began = time.perf_counter()
            feed(piece, at)
            took = time.perf_counter() - began
            spent += took
            at += len(piece)
            fed += len(piece)
            per_byte = max(took, 1e-7) / len(piece)
            size = min(MAX_PIECE, max(FIRST_PIECE, int(PIECE_TIME / per_byte)))
            yield
        offset += len(chunk)
        if at >= end:
            break
    return fed, skipped


#: Bytes looked back at for an escape sequence still open (see :func:`ends_clean`).
CLEAN_LOOKBACK: Final = 512
_CSI_DONE: Final = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]")
_ESC_DONE: Final = re.compile(rb"\x1b[ -/]*[0-~]")


def ends_clean(tail: bytes) -> bool:
    """Whether output ending in ``tail`` leaves no sequence or character unfinished.

    Conservative: a string sequence (OSC, DCS...) is finished only by its
    terminator; one opened more than :data:`CLEAN_LOOKBACK` bytes back goes
    unseen.
    """
    esc = tail.rfind(b"\x1b")
    if esc >= 0:
        seq = tail[esc:]
        if len(seq) == 1:
            return False
        kind = seq[1:2]
        if kind == b"[":
            if not _CSI_DONE.match(seq):
                return False
        elif kind in (b"]", b"P", b"_", b"^", b"X"):
            if b"\x07" not in seq:  # ESC \ would have been the last ESC
                return False
        elif not _ESC_DONE.match(seq):
            return False
    # A UTF-8 character cut short: continuation bytes at the end, fewer than its lead asks for.
    n = 0
    while n < min(len(tail), 3) and 0x80 <= tail[-1 - n] < 0xC0:
        n += 1
    if n == len(tail):
        return True
    lead = tail[-1 - n]
    want = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead >= 0xF0 else 1
    return lead < 0x80 or n + 1 >= want


class QueryWatch:
    """The inline part: finds queries in each batch as it is read (cheap)."""

    def __init__(self) -> None:
        self._scanner = QueryScanner()
        #: The record to take the scanner's start from, with the first output.
        self._resumed: Record | None = None

    def ends(self, data: bytes) -> list[int]:
        """Where in ``data`` (just added to the record) each query it completes ends."""
        if self._resumed is not None:
            self._prime(self._resumed, len(data))
        return [q.end for q in self._scanner.feed(data)]

    def resume(self, record: Record) -> None:
        """Go on from the output ``record`` holds (another daemon read it): a query
        it leaves unfinished is answered when the rest of it comes.

        The record is read with the first output that comes (a thousand
        sessions each reading their ring's tail as they are taken over were a
        sixth of a reexec's pause).
        """
        self._resumed = record

    def _prime(self, record: Record, new: int) -> None:
        self._resumed = None
        held = b"".join(record.tail(QueryScanner.HOLD + new))
        if len(held) > new:
            self._scanner.prime(held[: len(held) - new])
