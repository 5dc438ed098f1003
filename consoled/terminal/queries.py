"""Terminal queries in program output, and the answers a terminal would give.

Programs ask their terminal things by writing a query into their output: busybox
ash asks for the cursor position (``ESC [ 6 n``) at every prompt, vim for the
device attributes, the colours, the modifyOtherKeys level. The answer arrives as
input. consoled answers each query once, for the session, from its own
:class:`~.screen.Screen` (as tmux does), and the attach client removes them from
what it writes (:class:`~.filter.OutputFilter`), so no replay and no second
terminal ever answers, and no answer is ever typed into a program by accident.

:class:`QueryScanner` finds queries in a stream cut anywhere; :func:`answer`
computes the reply from the screen *as it is just after the query*:
:class:`Responder` does both in order (feed the screen up to a query, answer it,
go on).

Fixed answers (the state of the session does not matter):

- primary device attributes (DA1, ``ESC [ c``): ``ESC [ ? 1 ; 2 c``, "VT100 with
  advanced video", what tmux answers without sixel. It promises nothing (no
  sixel, no ReGIS) that the terminal a user attaches from might lack.
- secondary device attributes (DA2, ``ESC [ > c``): ``ESC [ > 84 ; 0 ; 0 c``, as
  tmux (84 is "T"). Programs that recognise it treat the terminal as a
  multiplexer speaking xterm's language rather than as some xterm version,
  whose feature set the real terminal behind consoled may not have.
- XTVERSION (``ESC [ > 0 q``): ``ESC P > | consoled VERSION ESC \\``.
- status report (``ESC [ 5 n``): ``ESC [ 0 n``, "OK".
- text area and cell size in pixels (``ESC [ 14 t``, ``ESC [ 16 t``): from a
  cell of 16 x 32 pixels, tmux's default when it does not know better.
- window state and position (``ESC [ 11 t``, ``ESC [ 13 t``): not iconified, at 0,0.

Queries that are removed but not answered, as a terminal that does not know
them would do: reports of the title (``ESC [ 20 t``, ``ESC [ 21 t``: a program
must not read back a title someone else set), the clipboard (OSC 52) and the
palette (OSC 4, 5), DECRQSS and XTGETTCAP (``ESC P $ q``, ``ESC P + q``), the
kitty keyboard protocol (``ESC [ ? u``), modifyOtherKeys (``ESC [ ? 4 m``),
tertiary attributes, and other device status reports. The foreground,
background and cursor colours (OSC 10, 11, 12) belong to the user's terminal, not
to the session: they are answered only when :class:`Identity` says what they are
(tmux too stays silent when it does not know).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .. import __version__
from ._scan import CSI_INERT, hold_from, parse_params, strip_inert

if TYPE_CHECKING:  # the client's filter needs no emulator: keep it unimported
    from .screen import Screen


class QueryKind(enum.Enum):
    """What a query asks."""

    STATUS = "status"  # DSR 5
    CURSOR_POSITION = "cursor_position"  # DSR 6 (CPR)
    EXTENDED_CURSOR_POSITION = "extended_cursor_position"  # DSR ? 6 (DECXCPR)
    DEVICE_STATUS = "device_status"  # any other DSR: printer, keyboard, locator...
    PRIMARY_ATTRIBUTES = "primary_attributes"  # DA1, and DECID (ESC Z)
    SECONDARY_ATTRIBUTES = "secondary_attributes"  # DA2
    TERTIARY_ATTRIBUTES = "tertiary_attributes"  # DA3
    VERSION = "version"  # XTVERSION
    WINDOW = "window"  # XTWINOPS reports: 11, 13, 14, 15, 16, 18, 19, 20, 21
    MODE = "mode"  # DECRQM
    KEYBOARD = "keyboard"  # kitty keyboard flags, XTQMODKEYS
    COLOR = "color"  # OSC 4, 5, 10-19, 52 with "?"
    SETTING = "setting"  # DECRQSS, XTGETTCAP


@dataclass(frozen=True, slots=True)
class Query:
    """A query found in output.

    Attributes:
        kind: what it asks.
        raw: its bytes (it may have begun in an earlier chunk).
        end: the offset, in the chunk just scanned, of the byte after it: feed
            the screen up to there, then answer.
    """

    kind: QueryKind
    raw: bytes
    end: int


_P: Final = rb"[0-9;" + CSI_INERT + rb"]"
#: Longest DCS request payload recognised.
MAX_DCS: Final = 512
_FULL_PATTERN: Final = (
    rb"\x1b(?:"
    rb"\[(?:"
    rb"(?P<dsr>\??" + _P + rb"{1,16}+)n"
    rb"|(?P<da1>" + _P + rb"{0,4}+)c"
    rb"|>(?P<da2>" + _P + rb"{0,4}+)c"
    rb"|=(?P<da3>" + _P + rb"{0,4}+)c"
    rb"|>(?P<version>" + _P + rb"{0,4}+)q"
    rb"|(?P<window>1[13-689]|2[01])(?:;[0-9]{0,5}+){0,2}+t"
    rb"|(?P<mode>\??" + _P + rb"{1,8}+)\$p"
    rb"|(?P<keyboard>\?u|\?" + _P + rb"{0,8}+m)"
    rb")"
    rb"|(?P<decid>Z)"
    rb"|\](?P<color>1[0-9]|[45];[0-9]{1,3}+|52;[a-z0-9]{0,16}+)(?P<asks>(?:;\?)++)"
    rb"(?P<st>\x07|\x1b\\)"
    rb"|P(?P<setting>[$+]q)[^\x07\x1b\x18\x1a]{0," + str(MAX_DCS).encode() + rb"}+"
    rb"(?:\x1b\\|\x07)"
    rb")"
)
_FULL: Final = re.compile(_FULL_PATTERN)
#: Candidates, found fast: no groups (see :func:`._scan.scan_pattern`) and one
#: parameter scan per CSI rather than one per kind of query. It matches every
#: query and a few other sequences (``ESC [ 8 ; 24 ; 80 t``); ``_FULL`` decides.
#: No candidate holds an ESC but its first byte and an ST's, so where ``_FULL``
#: rejects one, it could not match inside it either.
_SCAN: Final = re.compile(
    rb"\x1b(?:\[(?:"
    rb"" + _P + rb"{0,16}+(?:[nct]|\$p)"
    rb"|\?" + _P + rb"{0,16}+(?:[nmu]|\$p)"
    rb"|[>=]" + _P + rb"{0,4}+[cq]"
    rb")"
    rb"|Z"
    rb"|\](?:1[0-9]|[45];[0-9]{1,3}+|52;[a-z0-9]{0,16}+)(?:;\?)++(?:\x07|\x1b\\)"
    rb"|P[$+]q[^\x07\x1b\x18\x1a]{0," + str(MAX_DCS).encode() + rb"}+(?:\x1b\\|\x07)"
    rb")"
)
_PARTIAL: Final = re.compile(
    rb"\x1b(?:\[[?>=]?" + _P + rb"{0,16}\$?"
    rb"|\][0-9;a-z]{0,24}(?:;\?)*;?\x1b?"
    rb"|P(?:[$+](?:q[^\x07\x1b\x18\x1a]{0," + str(MAX_DCS).encode() + rb"}\x1b?)?)?"
    rb")?\Z"
)
_MAX_PARTIAL: Final = MAX_DCS + 8
_KINDS: Final[dict[str, QueryKind]] = {
    "da1": QueryKind.PRIMARY_ATTRIBUTES,
    "decid": QueryKind.PRIMARY_ATTRIBUTES,
    "da2": QueryKind.SECONDARY_ATTRIBUTES,
    "da3": QueryKind.TERTIARY_ATTRIBUTES,
    "version": QueryKind.VERSION,
    "window": QueryKind.WINDOW,
    "mode": QueryKind.MODE,
    "keyboard": QueryKind.KEYBOARD,
    "st": QueryKind.COLOR,
    "setting": QueryKind.SETTING,
}


def _kind(buf: bytes, found: re.Match[bytes]) -> QueryKind | None:
    """The kind of the query ``found`` (a ``_SCAN`` match in ``buf``), or None for
    a sequence that looks like one but is not (``ESC [ 1 c``)."""
    m = _FULL.fullmatch(buf, found.start(), found.end())
    if m is None:
        return None
    name = m.lastgroup
    assert name is not None
    if name == "dsr":
        dsr = strip_inert(m.group("dsr"))
        if dsr == b"5":
            return QueryKind.STATUS
        if dsr == b"6":
            return QueryKind.CURSOR_POSITION
        if dsr == b"?6":
            return QueryKind.EXTENDED_CURSOR_POSITION
        return QueryKind.DEVICE_STATUS
    if name in ("da1", "da2", "da3", "version"):
        # Only a parameter of 0 (or none) asks; ESC [ 1 c and the like do not.
        params = strip_inert(m.group(name))
        return _KINDS[name] if params in (b"", b"0") else None
    return _KINDS[name]


class QueryScanner:
    """Finds terminal queries in output cut into chunks anywhere.

    A query split across chunks is reported with the chunk that completes it;
    an unfinished one at the end of a chunk is held (at most a few hundred
    bytes) until the next.
    """

    #: The longest unfinished query held: what :meth:`prime` needs of the output.
    HOLD: Final = _MAX_PARTIAL

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[Query]:
        """The queries that end in ``data``, in order."""
        held = len(self._tail)
        buf = self._tail + data if held else data
        first = buf.find(b"\x1b")  # memchr: faster than the pattern's own search
        if first < 0:
            self._tail = b""
            return []  # most output
        found: list[Query] = []
        last_end = 0
        for m in _SCAN.finditer(buf, first):
            last_end = m.end()
            kind = _kind(buf, m)
            if kind is not None:
                found.append(Query(kind, m.group(0), last_end - held))
        self._tail = buf[hold_from(_PARTIAL, buf, last_end, _MAX_PARTIAL) :]
        return found

    def reset(self) -> None:
        """Forget an unfinished query (the output that followed it was lost)."""
        self._tail = b""

    def prime(self, data: bytes) -> None:
        """Go on from output another scanner saw: hold the unfinished query at its end.

        The queries ``data`` completes are not reported (they were answered
        before); a query it leaves unfinished is, with the output that ends it.
        Only the last :attr:`HOLD` bytes of ``data`` matter.
        """
        self._tail = b""
        self.feed(data[-self.HOLD :])


def find_queries(buf: bytes) -> list[tuple[int, int, QueryKind]]:
    """Every query in ``buf`` as ``(start, end, kind)``: the whole-stream reference."""
    found = []
    for m in _SCAN.finditer(buf):
        kind = _kind(buf, m)
        if kind is not None:
            found.append((m.start(), m.end(), kind))
    return found


def split_queries(buf: bytes, start: int, end: int) -> tuple[list[tuple[int, int]], int]:
    """Spans of the queries in ``buf[:end]`` and where an unfinished one starts.

    For :class:`~.filter.OutputFilter`: the returned position is ``end`` of
    ``buf`` unless a query may be unfinished at the end of it.
    """
    spans = []
    last_end = start
    for m in _SCAN.finditer(buf, start, end):
        last_end = m.end()
        if _kind(buf, m) is not None:
            spans.append((m.start(), m.end()))
    return spans, hold_from(_PARTIAL, buf, last_end, _MAX_PARTIAL)


@dataclass(frozen=True, slots=True)
class Identity:
    """The fixed parts of the answers: what the terminal says it is.

    Attributes:
        primary_attributes: the DA1 answer.
        secondary_attributes: the DA2 answer.
        version: the XTVERSION name and version.
        cell_pixels: a character cell's ``(width, height)`` in pixels, for the
            pixel size reports; None to leave them unanswered.
        colors: answers to OSC colour queries, by number (10 foreground, 11
            background, 12 cursor), in X11 form (``rgb:ffff/ffff/ffff``).
            Unlisted colours are not answered.
    """

    primary_attributes: bytes = b"\x1b[?1;2c"
    secondary_attributes: bytes = b"\x1b[>84;0;0c"
    version: str = f"consoled {__version__}"
    cell_pixels: tuple[int, int] | None = (16, 32)
    colors: Mapping[int, str] = field(default_factory=dict)


DEFAULT_IDENTITY: Final = Identity()

_MODE: Final = re.compile(rb"\x1b\[(\??)(.*)\$p", re.DOTALL)
_WINDOW: Final = re.compile(rb"\x1b\[(\d+)")
_COLOR: Final = re.compile(rb"\x1b\](\d+)")


def answer(query: Query, screen: Screen, identity: Identity = DEFAULT_IDENTITY) -> bytes:
    """What a terminal showing ``screen`` answers to ``query``; empty for no answer.

    ``screen`` must have been fed the output up to the end of the query (and no
    further) for the cursor position to be right.
    """
    kind = query.kind
    if kind is QueryKind.CURSOR_POSITION or kind is QueryKind.EXTENDED_CURSOR_POSITION:
        row, col = _report_position(screen)
        if kind is QueryKind.CURSOR_POSITION:
            return b"\x1b[%d;%dR" % (row, col)
        return b"\x1b[?%d;%d;1R" % (row, col)
    if kind is QueryKind.STATUS:
        return b"\x1b[0n"
    if kind is QueryKind.PRIMARY_ATTRIBUTES:
        return identity.primary_attributes
    if kind is QueryKind.SECONDARY_ATTRIBUTES:
        return identity.secondary_attributes
    if kind is QueryKind.VERSION:
        return b"\x1bP>|" + identity.version.encode() + b"\x1b\\"
    if kind is QueryKind.WINDOW:
        return _window(query.raw, screen, identity)
    if kind is QueryKind.MODE:
        return _mode(query.raw, screen)
    if kind is QueryKind.COLOR:
        return _colors(query.raw, identity)
    return b""


def _report_position(screen: Screen) -> tuple[int, int]:
    """CPR's 1-based row and column: relative to the scroll region in origin mode,
    and on the last column while a wrap is pending."""
    cursor = screen.cursor
    return cursor.row + 1 - screen.origin_offset(), min(cursor.col, screen.cols - 1) + 1


def _window(raw: bytes, screen: Screen, identity: Identity) -> bytes:
    m = _WINDOW.match(raw)
    assert m is not None
    op = int(m.group(1))
    rows, cols = screen.rows, screen.cols
    if op == 18:
        return b"\x1b[8;%d;%dt" % (rows, cols)
    if op == 19:
        return b"\x1b[9;%d;%dt" % (rows, cols)
    if op == 11:
        return b"\x1b[1t"
    if op == 13:
        return b"\x1b[3;0;0t"
    if identity.cell_pixels is not None:
        width, height = identity.cell_pixels
        if op == 14:
            return b"\x1b[4;%d;%dt" % (rows * height, cols * width)
        if op == 16:
            return b"\x1b[6;%d;%dt" % (height, width)
    return b""  # 15 (screen size in pixels), 20, 21 (titles)


def _mode(raw: bytes, screen: Screen) -> bytes:
    m = _MODE.match(raw)
    assert m is not None
    private = m.group(1) == b"?"
    params = parse_params(m.group(2))
    mode = params[0]
    modes = screen.modes
    state = modes.private_mode(mode) if private else modes.ansi_mode(mode)
    value = 0 if state is None else 1 if state else 2
    return b"\x1b[%s%d;%d$y" % (m.group(1), mode, value)


def _colors(raw: bytes, identity: Identity) -> bytes:
    """OSC 10-19 may ask for several in one (``ESC ] 10 ; ? ; ?`` asks 10 and 11)."""
    m = _COLOR.match(raw)
    assert m is not None
    first = int(m.group(1))
    if first < 10 or first > 19:
        return b""  # palette (4, 5) and clipboard (52): never answered
    st = b"\x07" if raw.endswith(b"\x07") else b"\x1b\\"
    out = bytearray()
    for number in range(first, first + raw.count(b"?")):
        color = identity.colors.get(number)
        if color is not None:
            out += b"\x1b]%d;%s%s" % (number, color.encode(), st)
    return bytes(out)


class Responder:
    """Feeds a screen and answers the queries in the output, in order.

    For the daemon: each chunk read from the pty goes to :meth:`feed`, which
    returns the bytes to write back to the pty (the answers; usually empty).

    Args:
        screen: the session's screen.
        identity: the fixed answers.
    """

    def __init__(self, screen: Screen, identity: Identity = DEFAULT_IDENTITY) -> None:
        self.screen = screen
        self.identity = identity
        self._scanner = QueryScanner()

    def feed(self, data: bytes) -> bytes:
        """Feed ``data`` to the screen; the answers to the queries in it."""
        queries = self._scanner.feed(data)
        if not queries:
            self.screen.feed(data)
            return b""
        out = bytearray()
        pos = 0
        for query in queries:
            self.screen.feed(data[pos : query.end])
            pos = query.end
            out += answer(query, self.screen, self.identity)
        self.screen.feed(data[pos:])
        return bytes(out)

    def skip(self, nbytes: int) -> None:
        """``nbytes`` of output were lost: the screen is approximate, no query in
        them is answered, and an unfinished one is forgotten."""
        self.screen.skip(nbytes)
        if nbytes > 0:
            self._scanner.reset()
