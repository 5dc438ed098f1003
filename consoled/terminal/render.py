"""Turn emulator state into bytes any xterm-compatible terminal draws.

pyavt's ``Vt.dump()`` redraws the screen faithfully (both screens, saved cursors,
scroll region, charsets, tab stops, a cursor waiting to wrap at the right margin)
but is written for avt itself: it uses the 8-bit CSI (0x9b), which a UTF-8
terminal reads as part of a character, REP (``ESC [ n b``) to repeat characters,
colon sub-parameters in SGR (``38:5:n``), C1 forms for the unfinished
sequence it appends, cursor tabulation control (``ESC [ 5 W``, ``ESC [ W``)
for the tab stops, and ``ESC [ ? 1047 h`` to enter an
alternate screen it assumes is blank. :func:`convert_dump` rewrites those into the
forms every terminal takes. The rest (history lines, the modes avt does not
follow) is written here from cells and :class:`~.modes.TerminalModes`.
"""

from __future__ import annotations

import re
from typing import Final

import avt

from .modes import PRIVATE_DEFAULTS, TITLE_IGNORED, TerminalModes

#: C1 controls as their 7-bit equivalents (ESC and the byte less 0x40).
_SEVEN_BIT: Final = {c: "\x1b" + chr(c - 0x40) for c in range(0x80, 0xA0)}
_REP: Final = re.compile(r"(.)\x1b\[(\d+)b", re.DOTALL)
_SGR_COLON: Final = re.compile(r"\x1b\[[0-9;]*:[0-9;:]*m")
_ENTER_ALTERNATE: Final = "\x1b[?1047h"
#: Cursor tabulation control as the dump writes it: clear all tab stops, set one here.
_CLEAR_TABS: Final = "\x1b[5W"
_SET_TAB: Final = "\x1b[W"
#: Modes that ``Vt.dump()`` already writes (or that the render must not set).
_DUMPED: Final = frozenset({1, 6, 7, 25, 66})


def convert_dump(dump: str) -> str:
    """``Vt.dump()`` in 7-bit sequences that xterm, tmux and the Linux console take.

    The dump ends with the parser's state: the start of a sequence that the
    output left unfinished (``CSI 3``, a lone ESC...), so that output fed after
    it carries on as it would have. avt writes these in C1 form too. The screen
    never holds C1 characters (:class:`~.screen.Screen` drops them), so every C1
    code point in a dump is a control.
    """
    text = dump.translate(_SEVEN_BIT)
    if "b" in text:
        text = _REP.sub(lambda m: m.group(1) * (int(m.group(2)) + 1), text)
    if ":" in text:
        text = _SGR_COLON.sub(lambda m: m.group(0).replace(":", ";"), text)
    if _SET_TAB in text or _CLEAR_TABS in text:
        # Tab stops as TBC 3 and HTS: tmux and the Linux console ignore CTC.
        text = text.replace(_CLEAR_TABS, "\x1b[3g").replace(_SET_TAB, "\x1bH")
    # 1047 does not clear the alternate screen on entry, and a real terminal's
    # alternate screen may hold something from before; avt assumes it is blank.
    return text.replace(_ENTER_ALTERNATE, _ENTER_ALTERNATE + "\x1b[2J")


def _color(color: avt.Color | None, base: int, bright: int, extended: int) -> str:
    if color is None:
        return ""
    if isinstance(color, avt.Color.RGB):
        return f";{extended};2;{color[0]};{color[1]};{color[2]}"
    assert isinstance(color, avt.Color.Indexed)
    index = color[0]
    if index < 8:
        return f";{base + index}"
    if index < 16:
        return f";{bright + index - 8}"
    return f";{extended};5;{index}"


def sgr(pen: avt.Pen) -> str:
    """The SGR sequence that selects ``pen`` from any state."""
    out = "\x1b[0"
    if pen.bold:
        out += ";1"
    if pen.faint:
        out += ";2"
    if pen.italic:
        out += ";3"
    if pen.underline:
        out += ";4"
    if pen.blink:
        out += ";5"
    if pen.inverse:
        out += ";7"
    if pen.strikethrough:
        out += ";9"
    out += _color(pen.foreground, 30, 90, 38)
    out += _color(pen.background, 40, 100, 48)
    return out + "m"


def render_line(line: avt.Line) -> str:
    """One line with its attributes, trailing blanks dropped, attributes reset after."""
    cells = line.cells
    end = len(cells)
    while end and cells[end - 1].char == " " and cells[end - 1].pen.is_default():
        end -= 1
    out: list[str] = []
    pen: avt.Pen | None = None  # None: the default attributes
    for cell in cells[:end]:
        if cell.width == 0:
            continue  # the second half of a wide character
        cell_pen = cell.pen
        if cell_pen.is_default():
            if pen is not None:
                out.append("\x1b[0m")
                pen = None
        elif pen is None or cell_pen != pen:
            out.append(sgr(cell_pen))
            pen = cell_pen
        out.append(cell.char)
    if pen is not None:
        out.append("\x1b[0m")
    return "".join(out)


def mode_sequences(modes: TerminalModes) -> bytes:
    """Sequences that set the modes ``Vt.dump()`` does not write.

    Those are: the keypad, mouse reporting and its encodings, focus events,
    bracketed paste, reverse video, cursor blinking, alternate scroll, the cursor
    style, modifyOtherKeys and the title. None of them prints, moves the cursor
    or depends on the screen in use, so they go before the dump (whose end may
    be an unfinished sequence that the next output completes).
    """
    out = bytearray()
    if modes.keypad_app:
        out += b"\x1b="
    if modes.mouse_tracking is not None:
        out += b"\x1b[?%dh" % modes.mouse_tracking
    for mode in sorted(modes.mouse_encodings):
        out += b"\x1b[?%dh" % mode
    for mode, value in modes.private:
        if mode not in _DUMPED and value != PRIVATE_DEFAULTS[mode]:
            out += b"\x1b[?%d%s" % (mode, b"h" if value else b"l")
    if modes.cursor_style:
        out += b"\x1b[%d q" % modes.cursor_style
    if modes.modify_other_keys:
        out += b"\x1b[>4;%dm" % modes.modify_other_keys
    if modes.title is not None:
        out += b"\x1b]2;" + modes.title.translate(None, TITLE_IGNORED) + b"\x1b\\"
    return bytes(out)
