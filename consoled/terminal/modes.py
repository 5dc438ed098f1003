"""Which terminal modes a stream of output leaves set: a fast streaming scanner.

:class:`ModeTracker` follows the modes that matter to whoever draws the output on
a real terminal: the alternate screen, cursor visibility, cursor keys and keypad,
mouse reporting, focus events, bracketed paste, the scroll region, the character
sets, the cursor style, modifyOtherKeys, whether the attributes were left at their
default, and the window title. :class:`~consoled.terminal.screen.Screen` uses it
for what the emulator does not track, the attach client (through
:class:`~consoled.terminal.filter.OutputFilter`) to know what to reset on detach.

It runs one ``re`` scan per chunk over bytes (the sequences it acts on are rare,
the scan itself runs in C), and keeps an unfinished sequence at the end of a chunk
for the next one, so any chunking gives the same result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from ._scan import CSI_INERT, hold_from, parse_params, scan_pattern, strip_inert

#: Modes that select a mouse tracking protocol; setting one replaces the others,
#: resetting any turns mouse reporting off (as xterm and tmux do).
MOUSE_TRACKING: Final = frozenset({9, 1000, 1001, 1002, 1003})
#: Mouse coordinate encodings (UTF-8, SGR, urxvt, SGR pixels).
MOUSE_ENCODINGS: Final = frozenset({1005, 1006, 1015, 1016})
#: Modes that switch to the alternate screen.
ALTERNATE_SCREEN: Final = frozenset({47, 1047, 1049})
#: Other DEC private modes followed, with their power-on values.
PRIVATE_DEFAULTS: Final[dict[int, bool]] = {
    1: False,  # DECCKM: application cursor keys
    5: False,  # DECSCNM: reverse video
    6: False,  # DECOM: origin mode
    7: True,  # DECAWM: auto-wrap
    12: False,  # cursor blinking
    25: True,  # DECTCEM: cursor visible
    66: False,  # DECNKM: application keypad (like ESC =)
    1004: False,  # focus events
    1007: False,  # alternate scroll
    2004: False,  # bracketed paste
}
#: ANSI modes followed: IRM (insert) and LNM (new line).
ANSI_DEFAULTS: Final[dict[int, bool]] = {4: False, 20: False}

_P: Final = rb"[0-9;" + CSI_INERT + rb"]"
#: Bytes a terminal ignores inside a title (C0 controls and DEL), and never
#: written into one.
TITLE_IGNORED: Final = bytes([*range(0x20), 0x7F])
#: Longest title kept (bytes); a longer OSC 0/2 is ignored, as some terminals do.
MAX_TITLE: Final = 1024

_FULL_PATTERN: Final = (
    rb"\x1b(?:"
    rb"\[(?:"
    rb"(?P<params>" + _P + rb"{0,32}+)(?P<final>[hlrJ]| q)"
    rb"|\?(?P<dec>" + _P + rb"{1,64}+)(?P<dec_set>[hl])"
    rb"|(?P<decstr>!p)"
    rb"|>4(?:;(?P<mok>[0-9]{0,3}+))?m"
    rb"|(?P<mok_off>>4n)"
    rb")"
    rb"|(?P<keypad>[=>])"
    rb"|(?P<ris>c)"
    rb"|(?P<scs>[()])(?P<charset>[\x30-\x7e])"
    rb"|\](?P<osc>[012]);(?P<title>[^\x07\x1b\x18\x1a]{0," + str(MAX_TITLE).encode() + rb"}+)"
    rb"(?:\x07|\x1b\\)"
    rb")"
)
#: Possessive quantifiers: no backtracking into parameters that cannot match.
_FULL: Final = re.compile(_FULL_PATTERN)
_SCAN: Final = scan_pattern(_FULL_PATTERN)
_PARTIAL: Final = re.compile(
    rb"\x1b(?:\[[?>!]?" + _P + rb"{0,64} ?"
    rb"|[()]"
    rb"|\][012]?"
    rb"|\][012];[^\x07\x1b\x18\x1a]{0," + str(MAX_TITLE).encode() + rb"}\x1b?"
    rb")?\Z"
)
_MAX_PARTIAL: Final = MAX_TITLE + 8
#: The body of a string sequence (OSC, DCS, SOS, PM, APC): a terminal ignores
#: SO and SI there, as every C0 control but those that end it (BEL, CAN, SUB, ESC).
_STRING_BODY: Final = re.compile(rb"\x1b[\]P_^X][^\x07\x18\x1a\x1b]*")
_SGR: Final = re.compile(rb"\x1b\[([0-9;:" + CSI_INERT + rb"]{0,64})m")
_SGR_SEARCH_STEPS: Final = 64


_RESET: Final = 1  # attributes, charsets and shift back to their defaults
_SWITCH: Final = 2  # another screen (or a reset one) from here on
_CLEAR: Final = 4  # scrollback cleared (ED 3)


class Break(NamedTuple):
    """A sequence after which lines scrolled off the top belong elsewhere.

    avt hands over the lines scrolled off the top at the end of each feed, from
    the screen then in use: lines scrolled on the normal screen just before a
    switch to the alternate one would come back late or not at all, and those
    before a clear of the scrollback (ED 3) must go. The screen feeds each such
    sequence to avt on its own.

    Attributes:
        start: its offset in the chunk (0 if it began in an earlier one).
        end: the offset after it.
        clears_history: it is ED 3, clear the scrollback.
    """

    start: int
    end: int
    clears_history: bool


@dataclass(frozen=True, slots=True)
class TerminalModes:
    """A snapshot of the modes a stream left set.

    Attributes:
        alternate: the mode (47, 1047 or 1049) that switched to the alternate
            screen, or None on the normal screen.
        cursor_visible: DECTCEM.
        cursor_keys_app: DECCKM, application cursor keys.
        keypad_app: application keypad (``ESC =``, or DECNKM).
        mouse_tracking: the mouse tracking mode (9, 1000, 1001, 1002, 1003) or None.
        mouse_encodings: the mouse encodings set (1005, 1006, 1015, 1016).
        private: the other DEC private modes followed (see ``PRIVATE_DEFAULTS``),
            as ``(mode, set)`` pairs that differ from their default, sorted.
        ansi: the ANSI modes (4, 20) that are set, sorted.
        scroll_region: ``(top, bottom)``, 1-based, when the scroll region is not
            the whole screen (``bottom`` is 0 when the number of rows is unknown
            and the region runs to the bottom).
        g0, g1: the character sets designated: ``b"0"`` for DEC line drawing,
            else ``b"B"`` (ASCII).
        shifted: SO was the last shift: G1 is in use.
        cursor_style: DECSCUSR (0 is the terminal's default).
        modify_other_keys: xterm's modifyOtherKeys level (0 is off).
        attributes_default: the last SGR left the attributes at their default.
            Conservative: only a plain reset (``ESC [ m``, ``ESC [ 0 m``), RIS
            and DECSTR count, not ``ESC [ 22 m`` after ``ESC [ 1 m``.
        title: the window title set with OSC 0 or 2 (None if never set).
    """

    alternate: int | None = None
    cursor_visible: bool = True
    cursor_keys_app: bool = False
    keypad_app: bool = False
    mouse_tracking: int | None = None
    mouse_encodings: frozenset[int] = field(default_factory=frozenset)
    private: tuple[tuple[int, bool], ...] = ()
    ansi: tuple[int, ...] = ()
    scroll_region: tuple[int, int] | None = None
    g0: bytes = b"B"
    g1: bytes = b"B"
    shifted: bool = False
    cursor_style: int = 0
    modify_other_keys: int = 0
    attributes_default: bool = True
    title: bytes | None = None

    def private_mode(self, mode: int) -> bool | None:
        """Whether DEC private mode ``mode`` is set; None if it is not followed."""
        if mode in ALTERNATE_SCREEN:
            return self.alternate is not None
        if mode in MOUSE_TRACKING:
            return self.mouse_tracking == mode
        if mode in MOUSE_ENCODINGS:
            return mode in self.mouse_encodings
        if mode == 1:
            return self.cursor_keys_app
        if mode == 25:
            return self.cursor_visible
        if mode == 66:
            return self.keypad_app
        if mode in PRIVATE_DEFAULTS:
            return dict(self.private).get(mode, PRIVATE_DEFAULTS[mode])
        return None

    def ansi_mode(self, mode: int) -> bool | None:
        """Whether ANSI mode ``mode`` (4 or 20) is set; None if it is not followed."""
        if mode in ANSI_DEFAULTS:
            return mode in self.ansi
        return None


class ModeTracker:
    """Follows the modes set and reset by a stream of terminal output.

    Args:
        initial: the modes to start from (for example those of a rendered screen
            that was written to the terminal first); defaults to a fresh terminal.
        rows: the number of rows, if known: a scroll region covering them all
            is then no scroll region.
        clamp_region: a scroll region whose bottom is below the last row ends at
            the last row, as in xterm and tmux; if False, it is ignored, as avt
            does (a :class:`~.screen.Screen` follows its emulator).
    """

    def __init__(
        self,
        initial: TerminalModes | None = None,
        *,
        rows: int | None = None,
        clamp_region: bool = True,
    ) -> None:
        self.rows = rows
        self._clamp = clamp_region
        #: How many full redraws were seen: clear screen (``ESC [ 2 J``), a switch
        #: to or from the alternate screen, or a reset (``ESC c``).
        self.redraws = 0
        self._tail = b""
        self._load(initial or TerminalModes())

    def _load(self, m: TerminalModes) -> None:
        self._alternate = m.alternate
        self._mouse = m.mouse_tracking
        self._encodings = set(m.mouse_encodings)
        self._private = dict(PRIVATE_DEFAULTS)
        self._private.update(m.private)
        self._private[1] = m.cursor_keys_app
        self._private[25] = m.cursor_visible
        self._private[66] = m.keypad_app
        self._ansi = {mode: mode in m.ansi for mode in ANSI_DEFAULTS}
        self._region = m.scroll_region
        self._g0 = m.g0
        self._g1 = m.g1
        self._shifted = m.shifted
        self._cursor_style = m.cursor_style
        self._mok = m.modify_other_keys
        self._sgr_default = m.attributes_default
        self._title = m.title

    def origin_offset(self) -> int:
        """Rows above the scroll region while origin mode puts the home there, else 0.

        What a cursor position report subtracts (cheaper than :attr:`modes`).
        """
        if self._private.get(6) and self._region is not None:
            return self._region[0] - 1
        return 0

    @property
    def modes(self) -> TerminalModes:
        """The modes as they stand after everything fed so far."""
        private = tuple(
            (mode, value)
            for mode, value in sorted(self._private.items())
            if mode not in (1, 25, 66) and value != PRIVATE_DEFAULTS[mode]
        )
        return TerminalModes(
            alternate=self._alternate,
            cursor_visible=self._private[25],
            cursor_keys_app=self._private[1],
            keypad_app=self._private[66],
            mouse_tracking=self._mouse,
            mouse_encodings=frozenset(self._encodings),
            private=private,
            ansi=tuple(sorted(mode for mode, on in self._ansi.items() if on)),
            scroll_region=self._region,
            g0=self._g0,
            g1=self._g1,
            shifted=self._shifted,
            cursor_style=self._cursor_style,
            modify_other_keys=self._mok,
            attributes_default=self._sgr_default,
            title=self._title,
        )

    def feed(self, data: bytes) -> list[Break]:
        """Scan the next chunk of output (any chunking gives the same result).

        Returns:
            the sequences in ``data`` that switch screens, reset the terminal or
            clear the scrollback, in order (usually none): see :class:`Break`.
        """
        held = len(self._tail)
        buf = self._tail + data if held else data
        last_end = 0
        reset_at = -1
        breaks: list[Break] = []
        for found in _SCAN.finditer(buf):
            last_end = found.end()
            m = _FULL.fullmatch(buf, found.start(), last_end)
            assert m is not None
            effect = self._apply(m)
            if effect:
                if effect & _RESET:
                    reset_at = m.start()
                if effect & (_SWITCH | _CLEAR):
                    breaks.append(
                        Break(max(m.start() - held, 0), last_end - held, bool(effect & _CLEAR))
                    )
        hold = hold_from(_PARTIAL, buf, last_end, _MAX_PARTIAL)
        self._tail = buf[hold:]
        scanned = buf if hold == len(buf) else buf[:hold]
        self._track_sgr(scanned, reset_at)
        # A terminal acts on SO and SI even inside an unfinished control
        # sequence (C0 controls are executed there): the held tail counts too.
        self._track_shift(buf, reset_at)
        return breaks

    def reset_tail(self) -> None:
        """Forget an unfinished sequence (the output that followed it was lost)."""
        self._tail = b""

    def resize(self, rows: int) -> None:
        """The terminal was resized: terminals reset the scroll region then."""
        self.rows = rows
        self._region = None

    def _apply(self, m: re.Match[bytes]) -> int:
        """Act on one sequence; its effects beyond modes (``_RESET``...)."""
        kind = m.lastgroup
        if kind == "dec_set":
            on = m.group("dec_set") == b"h"
            redraws = self.redraws
            for mode in parse_params(m.group("dec")):
                self._set_private(mode, on)
            return _SWITCH if self.redraws != redraws else 0
        elif kind == "final":
            final = m.group("final")
            params = parse_params(m.group("params"))
            if final == b"J":
                if params == [2]:
                    self.redraws += 1
                elif params == [3]:
                    return _CLEAR
            elif final == b"r":
                self._set_region(params)
            elif final == b" q":
                self._cursor_style = params[0]
            else:
                for mode in params:
                    if mode in self._ansi:
                        self._ansi[mode] = final == b"h"
        elif kind == "keypad":
            self._private[66] = m.group("keypad") == b"="
        elif kind == "title":
            if m.group("osc") != b"1":
                self._title = clean_title(m.group("title"))
        elif kind == "charset":
            # Line drawing or not: the national sets are ASCII in practice.
            charset = b"0" if m.group("charset") == b"0" else b"B"
            if m.group("scs") == b"(":
                self._g0 = charset
            else:
                self._g1 = charset
        elif kind == "ris":
            self._load(TerminalModes(title=self._title))
            self.redraws += 1
            return _RESET | _SWITCH
        elif kind == "decstr":
            self._soft_reset()
            return _RESET
        elif kind == "mok":
            self._mok = int(m.group("mok") or b"0")
        else:  # ESC [ > 4 m, ESC [ > 4 n: modifyOtherKeys off
            self._mok = 0
        return 0

    def _set_private(self, mode: int, on: bool) -> None:
        if mode in ALTERNATE_SCREEN:
            if on and self._alternate is None:
                self._alternate = mode
                self.redraws += 1
            elif not on and self._alternate is not None:
                self._alternate = None
                self.redraws += 1
        elif mode in MOUSE_TRACKING:
            self._mouse = mode if on else None
        elif mode in MOUSE_ENCODINGS:
            if on:
                self._encodings.add(mode)
            else:
                self._encodings.discard(mode)
        elif mode in self._private:
            self._private[mode] = on

    def _set_region(self, params: list[int]) -> None:
        top = params[0] or 1
        bottom = params[1] if len(params) > 1 else 0
        rows = self.rows
        if rows is not None:
            if bottom > rows and not self._clamp:
                return
            bottom = min(bottom or rows, rows)
            if top >= bottom:
                return  # invalid: terminals ignore it
            self._region = None if top == 1 and bottom == rows else (top, bottom)
        elif bottom and top >= bottom:
            return
        else:
            self._region = None if top == 1 and bottom == 0 else (top, bottom)

    def _soft_reset(self) -> None:
        """DECSTR, as xterm does it (mouse, paste and the screen are left alone)."""
        self._private.update({1: False, 6: False, 7: True, 25: True, 66: False})
        self._ansi[4] = False
        self._region = None
        self._g0 = self._g1 = b"B"

    def _track_sgr(self, buf: bytes, reset_at: int) -> None:
        """Whether the last SGR (or a reset after it) left the attributes at default.

        SGR is by far the most frequent sequence in coloured output: rather than
        act on each, look for the last one, from the end of the chunk.
        """
        end = len(buf)
        for _ in range(_SGR_SEARCH_STEPS):
            pos = buf.rfind(b"\x1b[", 0, end)
            if pos < reset_at or pos < 0:
                if reset_at >= 0:
                    self._sgr_default = True
                return
            m = _SGR.match(buf, pos)
            if m is not None:
                self._sgr_default = _is_sgr_reset(m.group(1))
                return
            end = pos
        # Many other sequences at the end of the chunk: scan the rest forward.
        matches = list(_SGR.finditer(buf, max(reset_at, 0), end))
        if matches:
            last = matches[-1]
            self._sgr_default = _is_sgr_reset(last.group(1))
        elif reset_at >= 0:
            self._sgr_default = True

    def _track_shift(self, buf: bytes, reset_at: int) -> None:
        last, shifted = _last_shift(buf)
        if last > reset_at:
            self._shifted = shifted
        elif reset_at >= 0:
            self._shifted = False


def clean_title(raw: bytes) -> bytes:
    """A title as a UTF-8 terminal takes it: no C0 or C1 controls, an invalid byte as U+FFFD.

    So the title recorded is the one a render writes back, and no byte of it
    can end the OSC that carries it (C1 ST) or act as a control.
    """
    text = raw.translate(None, TITLE_IGNORED).decode("utf-8", "replace")
    return "".join(c for c in text if not "\x80" <= c <= "\x9f").encode()


def _last_shift(buf: bytes) -> tuple[int, bool]:
    """Where the last SO or SI a terminal acts on is in ``buf`` (-1: none), and if it is SO.

    One inside a string sequence (a title, say) is not a shift.
    """
    end = len(buf)
    bodies: list[tuple[int, int]] | None = None
    while True:
        so = buf.rfind(b"\x0e", 0, end)
        si = buf.rfind(b"\x0f", 0, end)
        last = max(so, si)
        if last < 0:
            return -1, False
        if bodies is None:
            bodies = [m.span() for m in _STRING_BODY.finditer(buf)] if b"\x1b" in buf else []
        if not any(start <= last < stop for start, stop in bodies):
            return last, last == so
        end = last


def _is_sgr_reset(params: bytes) -> bool:
    return all(p in (b"", b"0") for p in strip_inert(params).split(b";"))
