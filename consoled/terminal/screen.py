"""A session's screen: what a terminal attached from the start would show now.

:class:`Screen` wraps pyavt's ``Vt`` (the Rust terminal emulator of asciinema,
measured about 100 times faster than pyte here) and adds what it lacks: UTF-8
decoding across chunks, the modes avt does not follow (see
:class:`~.modes.ModeTracker`), a bounded history of the lines scrolled off the
top, a render for real terminals, and a note of when the screen is only
approximate because some output was never fed.

avt is a dependency written in Rust: a bug in it is a *panic*, which pyo3
raises as ``PanicException``, a ``BaseException`` that no ``except
Exception`` stops.  One would take the daemon down (every console with it),
and come back with the same output after a restart.  So every call into avt
is guarded: a panic costs the screen, not the daemon.  The screen starts
again blank, approximate until the program's next redraw, and ``on_fault``
is told.
"""

from __future__ import annotations

import codecs
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import avt

from .modes import ModeTracker, TerminalModes
from .render import convert_dump, mode_sequences, render_line, sgr

#: The emulator is fed at most this much text at once: avt returns the lines it
#: touched, and very large strings cost more per byte.
FEED_CHUNK: Final = 64 * 1024
#: Bounds of the emulated size; a larger window is emulated at the bound (and
#: the screen is then approximate), so one session cannot take gigabytes.
MAX_ROWS: Final = 1000
MAX_COLS: Final = 1000
#: Narrowest emulated width: avt 0.17 panics when a line holding a wide
#: character is reflowed to one column.  A one-column window is emulated two
#: wide (the screen is then approximate).
MIN_COLS: Final = 2
#: Lines of history kept by default.
DEFAULT_HISTORY: Final = 1000
#: Code points U+0080..U+009F: C1 controls when they arrive UTF-8 encoded. avt
#: obeys them; UTF-8 terminals (tmux, VTE, xterm by default) do not, so they are
#: dropped before avt sees them, like the 8-bit forms, which are invalid UTF-8.
_C1: Final = re.compile("[\x80-\x9f]")
#: CAN: cancels a sequence in progress (fed when output was skipped).
_CANCEL: Final = "\x18"
#: Written before the screen: default attributes, no scroll region, cursor home,
#: clear.
_PREAMBLE: Final = b"\x1b[0m\x1b[r\x1b[H\x1b[2J"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the cursor is, 0-based; ``col`` may equal the width when the next
    character will wrap (the terminal shows it on the last column)."""

    row: int
    col: int
    visible: bool


class Screen:
    """The current screen of a session, fed with its output.

    Args:
        rows: the window height.
        cols: the window width.
        history: how many lines scrolled off the top are kept.
    """

    def __init__(
        self,
        rows: int = 24,
        cols: int = 80,
        *,
        history: int = DEFAULT_HISTORY,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self._rows, self._cols = rows, cols
        erows, ecols = _emulated(rows, cols)
        self._vt = avt.Vt(ecols, erows, 0)
        self._on_fault = on_fault
        #: Panics of the emulator survived (see the module docstring).
        self.faults = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._modes = ModeTracker(rows=erows, clamp_region=False)
        self._history: deque[avt.Line] = deque(maxlen=history)
        self._skipped = False
        self._position = 0

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def position(self) -> int:
        """Bytes of output accounted for: fed plus skipped."""
        return self._position

    @property
    def approximate(self) -> bool:
        """Whether the screen may differ from the program's.

        True after :meth:`skip`, until the output shows a full redraw (clear
        screen, a switch to or from the alternate screen, a reset), and while
        the window is larger than ``MAX_ROWS`` x ``MAX_COLS``.
        """
        return self._skipped or (self._rows, self._cols) != self._vt.size[::-1]

    @property
    def cursor(self) -> Cursor:
        c = self._vt.cursor
        return Cursor(c.row, c.col, c.visible)

    @property
    def modes(self) -> TerminalModes:
        """The modes the output left set.

        Cursor visibility and cursor keys come from the emulator, which also
        obeys the odd forms a byte scanner does not follow.
        """
        modes = self._modes.modes
        c = self._vt.cursor
        if modes.cursor_visible == c.visible and modes.cursor_keys_app == (
            self._vt.cursor_key_app_mode
        ):
            return modes
        return replace(
            modes, cursor_visible=c.visible, cursor_keys_app=self._vt.cursor_key_app_mode
        )

    def origin_offset(self) -> int:
        """Rows above the scroll region while origin mode is on (see ModeTracker)."""
        return self._modes.origin_offset()

    @property
    def title(self) -> str | None:
        title = self._modes.modes.title
        return None if title is None else title.decode("utf-8", "replace")

    def feed(self, data: bytes) -> None:
        """Feed output as read from the pty, cut anywhere."""
        if not data:
            return
        self._position += len(data)
        redraws = self._modes.redraws
        breaks = self._modes.feed(data)
        if self._skipped and self._modes.redraws != redraws:
            self._skipped = False
        if not breaks:
            self._feed_vt(data)
            return
        pos = 0
        for start, end, clears_history in breaks:
            if start > pos:
                self._feed_vt(data[pos:start])
            self._feed_vt(data[max(start, pos) : end])
            pos = end
            if clears_history:
                self._history.clear()
        self._feed_vt(data[pos:])

    def _feed_vt(self, data: bytes) -> None:
        decode = self._decoder.decode
        feed = self._vt.feed_str
        history = self._history
        for start in range(0, len(data), FEED_CHUNK):
            text = decode(data[start : start + FEED_CHUNK])
            if not text.isascii():
                text = _C1.sub("", text)
            try:
                _, gone = feed(text)
            except BaseException as exc:
                self._survive(exc, "feed")
                feed, history = self._vt.feed_str, self._history
                continue
            if gone:
                history.extend(gone)

    def _survive(self, exc: BaseException, what: str) -> None:
        """avt panicked in ``what``: start a blank emulator, approximate from now on.

        Raises:
            exc: it is not a panic.
        """
        if type(exc).__name__ != "PanicException":
            raise exc
        self.faults += 1
        erows, ecols = _emulated(self._rows, self._cols)
        self._vt = avt.Vt(ecols, erows, 0)
        self._history = deque(maxlen=self._history.maxlen)
        self._skipped = True
        if self._on_fault is not None:
            self._on_fault(f"the terminal emulator failed in {what} ({exc}); it starts again")

    def skip(self, nbytes: int) -> None:
        """``nbytes`` of output were lost (not fed): the screen is now approximate."""
        if nbytes <= 0:
            return
        self._position += nbytes
        self._skipped = True
        self._decoder.reset()
        self._modes.reset_tail()
        self._feed_vt(_CANCEL.encode())

    def resize(self, rows: int, cols: int) -> None:
        """The window is now ``rows`` x ``cols``; the emulator reflows as avt does."""
        self._rows, self._cols = rows, cols
        erows, ecols = _emulated(rows, cols)
        if (ecols, erows) == self._vt.size:
            return
        self._modes.resize(erows)
        try:
            _, gone = self._vt.resize(ecols, erows)
        except BaseException as exc:
            self._survive(exc, "resize")  # the new emulator has the new size
            return
        if gone:
            self._history.extend(gone)

    def text(self) -> list[str]:
        """The visible lines as plain text, trailing blanks dropped (for tests and logs)."""
        return [line.text.rstrip(" ") for line in self._view()]

    def _view(self) -> list[avt.Line]:
        try:
            return self._vt.view()
        except BaseException as exc:
            self._survive(exc, "view")
            return self._vt.view()

    def cells(self) -> list[list[tuple[str, str]]]:
        """The visible cells as ``(character, SGR)`` pairs, a row at a time.

        The second half of a wide character is left out. Two screens that look
        the same have equal cells (for tests and checks).
        """
        return [
            [(cell.char, sgr(cell.pen)) for cell in line.cells if cell.width]
            for line in self._view()
        ]

    def history(self, n: int) -> bytes:
        """The last ``n`` lines scrolled off the top, oldest first, each ending in CR LF.

        Lines keep their attributes and lose trailing blanks, so a narrower
        terminal wraps them rather than showing a ragged edge.
        """
        if n <= 0 or not self._history:
            return b""
        lines = list(self._history)[-n:]
        return "".join(render_line(line) + "\r\n" for line in lines).encode()

    @classmethod
    def from_render(
        cls,
        rows: int,
        cols: int,
        render: bytes,
        *,
        approximate: bool,
        on_fault: Callable[[str], None] | None = None,
    ) -> Screen:
        """A screen drawn by one of :meth:`render`'s results (no history).

        The cells, the cursor and the modes are the same, and so are the
        tab stops, the saved cursors and the character sets, which decide
        how later output is drawn.
        """
        screen = cls(rows, cols, history=0, on_fault=on_fault)
        screen.feed(render)
        screen._skipped = approximate or screen.faults > 0
        return screen

    def render(self, *, history: int = 0, above: bytes = b"") -> bytes:
        """Bytes that draw this screen on a terminal of the same size.

        The terminal is assumed xterm-compatible and on its normal screen. The
        render clears it, draws the normal screen (and the alternate one over it
        if that is in use), puts the cursor and its visibility back and sets the
        modes the output left set.

        Args:
            history: put up to that many history lines first: they end up in the
                terminal's own scrollback, above the screen.
            above: lines to put there instead (as :meth:`history` gives them,
                from another screen).
        """
        head, body, rows = self.render_parts()
        return join_render(head, above or self.history(history), rows, body)

    def render_parts(self) -> tuple[bytes, bytes, int]:
        """:meth:`render` without history, in parts: what comes before the lines
        put above the screen, the screen, and its rows (see :func:`join_render`)."""
        try:
            dump = self._vt.dump()
        except BaseException as exc:
            self._survive(exc, "render")
            dump = self._vt.dump()
        head = _PREAMBLE + mode_sequences(self.modes)
        return head, convert_dump(dump).encode(), self._vt.size[1]


def join_render(head: bytes, above: bytes, rows: int, body: bytes) -> bytes:
    """A render (see :meth:`Screen.render_parts`) with the lines ``above`` put first."""
    if not above:
        return head + body
    # Scroll them all off the visible rows (``rows`` of them), which stay blank.
    return b"".join((head, above, b"\n" * (rows - 1), b"\x1b[H", body))


def _emulated(rows: int, cols: int) -> tuple[int, int]:
    """The size emulated for a ``rows`` x ``cols`` window (see MAX_ROWS, MIN_COLS)."""
    return min(max(rows, 1), MAX_ROWS), min(max(cols, MIN_COLS), MAX_COLS)
