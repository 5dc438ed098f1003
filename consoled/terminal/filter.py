"""What the attach client writes to the user's terminal, and how it cleans up.

:class:`OutputFilter` removes terminal queries from the output (the daemon
answers them once, for the session; the user's terminal must not answer them a
second time, least of all for a replay, where the answer would be typed into
whatever runs now) and follows the modes the output leaves set, so that
:meth:`OutputFilter.reset_sequence` can put the user's terminal back on detach,
as tmux does.
"""

from __future__ import annotations

from ._scan import inert_controls
from .modes import PRIVATE_DEFAULTS, ModeTracker, TerminalModes
from .queries import split_queries


class OutputFilter:
    """A streaming filter for output on its way to the user's terminal.

    Args:
        initial: the modes the terminal is in when the filter starts. A client
            that first writes a rendered screen passes the render through
            :meth:`feed` instead: the render sets the screen's modes, and enters
            the alternate screen in its own way (1047, which saves no cursor).
        rows: the terminal's height, if known (a scroll region over every row
            is then no scroll region to reset).
    """

    def __init__(self, initial: TerminalModes | None = None, *, rows: int | None = None) -> None:
        self._tracker = ModeTracker(initial, rows=rows)
        self._tail = b""

    @property
    def modes(self) -> TerminalModes:
        """The modes the output written so far left set."""
        return self._tracker.modes

    def feed(self, data: bytes) -> bytes:
        """The bytes to write for ``data``: the same, in order, without queries.

        A query split across chunks is removed whole; so that it can be, an
        unfinished escape sequence at the end of ``data`` that may be the start
        of one is held until the next call (a terminal could not act on it yet
        anyway). Control characters inside a removed query, which a terminal
        would have executed, are kept.
        """
        buf = self._tail + data if self._tail else data
        spans, hold = split_queries(buf, 0, len(buf))
        self._tail = buf[hold:]
        if not spans:
            out = buf if hold == len(buf) else buf[:hold]
        else:
            parts = []
            pos = 0
            for start, end in spans:
                parts.append(buf[pos:start])
                parts.append(inert_controls(buf[start:end]))
                pos = end
            parts.append(buf[pos:hold])
            out = b"".join(parts)
        if out:
            self._tracker.feed(out)
        return out

    def flush(self) -> bytes:
        """The held bytes, when no more output will come (they are no query)."""
        out, self._tail = self._tail, b""
        if out:
            self._tracker.feed(out)
        return out

    def resize(self, rows: int) -> None:
        """The user's terminal was resized (terminals then reset the scroll region)."""
        self._tracker.resize(rows)

    def reset_sequence(self) -> bytes:
        """Bytes that put back every mode the output changed; empty if none did.

        In order: leave the alternate screen (only if the output entered it:
        leaving it otherwise would move the cursor), show the cursor, normal
        cursor keys and keypad, mouse reporting, focus events and bracketed
        paste off, the other followed modes back to their defaults, the cursor
        style, modifyOtherKeys, the character sets, the scroll region (keeping
        the cursor where it is) and the attributes. The title is left alone:
        what it was before is not known.
        """
        return reset_sequence(self._tracker.modes)


def reset_sequence(modes: TerminalModes) -> bytes:
    """Bytes that take a terminal in ``modes`` back to a fresh terminal's modes."""
    out = bytearray()
    if modes.alternate is not None:
        out += b"\x1b[?%dl" % modes.alternate
    if not modes.cursor_visible:
        out += b"\x1b[?25h"
    if modes.cursor_keys_app:
        out += b"\x1b[?1l"
    if modes.keypad_app:
        out += b"\x1b>"
    if modes.mouse_tracking is not None:
        out += b"\x1b[?%dl" % modes.mouse_tracking
    for mode in sorted(modes.mouse_encodings):
        out += b"\x1b[?%dl" % mode
    for mode, value in modes.private:
        if value != PRIVATE_DEFAULTS[mode]:
            out += b"\x1b[?%d%s" % (mode, b"h" if PRIVATE_DEFAULTS[mode] else b"l")
    for mode in modes.ansi:
        out += b"\x1b[%dl" % mode
    if modes.cursor_style:
        out += b"\x1b[0 q"
    if modes.modify_other_keys:
        out += b"\x1b[>4m"
    if modes.g0 != b"B":
        out += b"\x1b(B"
    if modes.g1 != b"B":
        out += b"\x1b)B"
    if modes.shifted:
        out += b"\x0f"
    if modes.scroll_region is not None:
        out += b"\x1b7\x1b[r\x1b8"
    if not modes.attributes_default:
        out += b"\x1b[0m"
    return bytes(out)
