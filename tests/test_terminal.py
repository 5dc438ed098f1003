"""consoled.terminal: screen, modes, queries and the output filter (pure, plus tmux).

The property tests generate output streams from tokens (text, UTF-8, controls,
CSI with random parameters, SGR, cursor movement, scroll regions, screen
switches, titles, queries, invalid bytes, and sequences cut short) and cut them
into random chunks. A screen fed in chunks must equal one fed in one piece; a
fresh screen fed the render must equal both; the query scanner and the filter
must not depend on the chunking either.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consoled.io.record import Record
from consoled.server.screenstate import (
    EmulationBudget,
    QueryWatch,
    SessionScreen,
    ends_clean,
)
from consoled.terminal import (
    Identity,
    ModeTracker,
    OutputFilter,
    Query,
    QueryKind,
    QueryScanner,
    Responder,
    Screen,
    TerminalModes,
    answer,
    reset_sequence,
)
from consoled.terminal import modes as modes_impl
from consoled.terminal import queries as queries_impl
from consoled.terminal._scan import inert_controls
from consoled.terminal.queries import find_queries
from consoled.terminal.render import convert_dump
from tests.support.tmux import PANE_FORMAT, TMUX, parse_flags

# --- stream generation --------------------------------------------------------------------

ESC = b"\x1b"
TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30
).map(str.encode)
UNICODE = st.sampled_from(["é", "ß", "日本", "語", "😀", "e\u0301", "│", "█", "\u00a0"]).map(
    str.encode
)
CONTROLS = st.sampled_from([b"\r", b"\n", b"\r\n", b"\t", b"\b", b"\x07", b"\x0e", b"\x0f"])
INVALID = st.binary(min_size=1, max_size=3).map(lambda b: bytes(x | 0x80 for x in b))
NUM = st.integers(0, 130)
PARAMS = st.lists(NUM, max_size=3).map(lambda ns: b";".join(b"%d" % n for n in ns))
CSI = st.builds(
    lambda p, f: ESC + b"[" + p + f,
    PARAMS,
    st.sampled_from([*b"ABCDEFGHIJKLMPSTXZ@`abdefgr"]).map(lambda c: bytes([c])),
)
SGR = st.lists(
    st.one_of(
        st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5", b"7", b"9", b"22", b"24", b"27"]),
        st.integers(30, 49).map(lambda n: b"%d" % n),
        st.integers(90, 107).map(lambda n: b"%d" % n),
        st.integers(0, 255).map(lambda n: b"38;5;%d" % n),
        st.tuples(NUM, NUM, NUM).map(lambda c: b"48;2;%d;%d;%d" % c),
    ),
    max_size=4,
).map(lambda ps: ESC + b"[" + b";".join(ps) + b"m")
CUP = st.tuples(st.integers(0, 1000), st.integers(0, 1000)).map(lambda rc: ESC + b"[%d;%dH" % rc)
REGION = st.tuples(st.integers(0, 30), st.integers(0, 30)).map(lambda tb: ESC + b"[%d;%dr" % tb)
MODES = st.builds(
    lambda modes, on: ESC + b"[?" + b";".join(b"%d" % m for m in modes) + on,
    st.lists(
        st.sampled_from(
            [1, 5, 6, 7, 12, 25, 47, 66, 1000, 1002, 1003, 1004, 1006, 1047, 1049, 2004]
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from([b"h", b"l"]),
)
SIMPLE = st.sampled_from(
    [
        *(ESC + c for c in [b"7", b"8", b"D", b"M", b"E", b"=", b">", b"c", b"(0", b"(B", b")0"]),
        *(ESC + b"[" + s for s in [b"2J", b"J", b"K", b"1K", b"!p", b"4h", b"4l", b"3 q"]),
        *(ESC + b"[" + s for s in [b">4;2m", b">4;m", b"s", b"u", b"?1049h", b"?1049l"]),
    ]
)
TITLE = TEXT.map(lambda t: ESC + b"]2;" + t[:20] + b"\x07")
QUERY = st.sampled_from(
    [
        b"\x1b[5n",
        b"\x1b[6n",
        b"\x1b[?6n",
        b"\x1b[c",
        b"\x1b[0c",
        b"\x1b[>c",
        b"\x1b[>0c",
        b"\x1b[>0q",
        b"\x1b[18t",
        b"\x1b[14t",
        b"\x1b[16t",
        b"\x1b[?2004$p",
        b"\x1b[?u",
        b"\x1b]10;?\x07",
        b"\x1b]11;?\x1b\\",
        b"\x1bP$q q\x1b\\",
        b"\x1bZ",
    ]
)
COMPLETE = st.one_of(CSI, SGR, CUP, REGION, MODES, SIMPLE, TITLE)
#: A sequence cut short; what follows may complete it into something else.
PARTIAL = st.builds(lambda s, f: s[: max(1, int(len(s) * f))], COMPLETE, st.floats(0, 0.95))
TOKEN = st.one_of(TEXT, TEXT, UNICODE, CONTROLS, INVALID, COMPLETE, COMPLETE, QUERY, PARTIAL)
STREAM = st.lists(TOKEN, max_size=80).map(b"".join)
SIZES = st.tuples(st.integers(2, 30), st.integers(2, 40))


def chunked(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` cut after each size in ``cuts`` (then the rest)."""
    pos = 0
    for size in cuts:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


CUTS = st.lists(st.integers(1, 40), max_size=60)


def fed(rows: int, cols: int, chunks: Iterator[bytes] | list[bytes]) -> Screen:
    screen = Screen(rows, cols)
    for chunk in chunks:
        screen.feed(chunk)
    return screen


def shown(modes: TerminalModes) -> TerminalModes:
    """The modes a render must reproduce.

    Which of 47, 1047 and 1049 entered the alternate screen does not show;
    attributes_default is conservative (only a plain ESC [ m counts; the cells
    and the render compare attributes); origin, auto-wrap, insert and new-line
    modes and the character sets are rendered from avt, which restores some of
    them on DECRC and ignores SO and SI inside an unfinished OSC string, where
    the byte scanner does not (the render being a fixed point checks them).
    """
    return replace(
        modes,
        alternate=modes.alternate and 1049,
        attributes_default=True,
        private=tuple(p for p in modes.private if p[0] not in (6, 7)),
        ansi=(),
        g0=b"B",
        g1=b"B",
        shifted=False,
    )


def assert_same_screen(a: Screen, b: Screen) -> None:
    assert a.cells() == b.cells()
    assert a.cursor == b.cursor
    assert shown(a.modes) == shown(b.modes)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- Screen ----------------------------------------------------------------------------------


@PROPERTY
@given(STREAM, CUTS, SIZES)
def test_chunking_does_not_change_the_screen(
    data: bytes, cuts: list[int], size: tuple[int, int]
) -> None:
    whole = fed(*size, [data])
    pieces = fed(*size, chunked(data, cuts))
    assert_same_screen(whole, pieces)
    assert whole.render() == pieces.render()
    assert whole.history(1000) == pieces.history(1000)


@PROPERTY
@given(STREAM, CUTS, st.lists(st.tuples(st.integers(1, 30), st.integers(1, 40)), max_size=8))
@example(data="漢".encode(), cuts=[], sizes=[(24, 1)])  # avt 0.17 panicked reflowing it
def test_output_and_resizes_in_any_order_never_fail_the_emulator(
    data: bytes, cuts: list[int], sizes: list[tuple[int, int]]
) -> None:
    """Down to one row and one column: avt never panics (a panic would be
    survived, see test_screen, but the screen would be lost)."""
    screen = Screen(24, 80)
    pieces = list(chunked(data, cuts))
    for i, piece in enumerate(pieces):
        screen.feed(piece)
        if i < len(sizes):
            screen.resize(*sizes[i])
    for size in sizes[len(pieces) :]:
        screen.resize(*size)
    screen.render(history=10)
    assert screen.faults == 0


@PROPERTY
@given(STREAM, CUTS, SIZES)
@example(data=b"\x1b]2;\x80\x07", cuts=[], size=(2, 2))  # an invalid byte in a title
def test_render_draws_the_same_screen(data: bytes, cuts: list[int], size: tuple[int, int]) -> None:
    original = fed(*size, [data])
    render = fed(*size, chunked(data, cuts)).render()
    assert "\x9b" not in render.decode()  # no 8-bit CSI, not even UTF-8 encoded
    redrawn = fed(*size, [render])
    assert_same_screen(original, redrawn)
    # Rendering is a fixed point: the redrawn screen renders to the same bytes.
    assert redrawn.render() == render


@PROPERTY
@given(STREAM, SIZES, st.integers(1, 50))
@example(data=b"\x1b]2;\r\x07", size=(2, 2), n=1)  # a CR in a title: ignored, as terminals do
def test_render_with_history_puts_it_above_the_screen(
    data: bytes, size: tuple[int, int], n: int
) -> None:
    original = fed(*size, [data])
    redrawn = fed(*size, [original.render(history=n)])
    assert_same_screen(original, redrawn)
    assert redrawn.history(n) == original.history(n)


def test_utf8_split_anywhere_and_invalid_bytes() -> None:
    data = "héllo 日本 😀".encode()
    for cut in range(1, len(data)):
        screen = fed(2, 20, [data[:cut], data[cut:]])
        assert screen.text()[0] == "héllo 日本 😀"
    screen = fed(2, 20, [b"a\xff\xc3(b\xe6\x97"])
    assert screen.text()[0] == "a\ufffd\ufffd(b"


def test_utf8_encoded_c1_controls_are_not_obeyed() -> None:
    # A UTF-8 terminal (tmux, VTE) does not take U+009B as CSI; avt would.
    screen = fed(2, 20, [b"a\xc2\x9b31mb\xc2\x85c"])
    assert screen.text()[0] == "a31mbc"
    assert screen.cells()[0][1][1] == "\x1b[0m"


def test_dump_conversion() -> None:
    assert convert_dump("ab \x1b[5b\x9b2;3H") == "ab      \x1b[2;3H"
    assert convert_dump("\x1b[0;38:5:100;48:2:1:2:3mx:y") == "\x1b[0;38;5;100;48;2;1;2;3mx:y"
    assert convert_dump("\x9b?1047h") == "\x1b[?1047h\x1b[2J"
    assert convert_dump("x\x9d") == "x\x1b]"
    assert convert_dump("\x9b5W\x9b3`\x1b[W\x9b1;1H") == "\x1b[3g\x1b[3`\x1bH\x1b[1;1H"


def test_render_sets_the_modes_avt_does_not_follow() -> None:
    screen = fed(
        5,
        20,
        [b"\x1b[?1049h\x1b=\x1b[?1002h\x1b[?1006h\x1b[?2004h\x1b[?1004h\x1b]0;top\x07\x1b[5 q"],
    )
    render = screen.render()
    for seq in [
        b"\x1b[?1047h",
        b"\x1b=",
        b"\x1b[?1002h",
        b"\x1b[?1006h",
        b"\x1b[?2004h",
        b"\x1b[?1004h",
        b"\x1b]2;top\x1b\\",
        b"\x1b[5 q",
    ]:
        assert seq in render
    assert screen.title == "top"


def test_pending_wrap_and_saved_cursor_survive_the_render() -> None:
    screen = fed(3, 5, [b"\x1b[2;2H\x1b7\x1b[1;1Habcde"])
    assert screen.cursor.col == 5
    redrawn = fed(3, 5, [screen.render()])
    assert_same_screen(screen, redrawn)
    screen.feed(b"X\x1b8Y")
    redrawn.feed(b"X\x1b8Y")
    assert_same_screen(screen, redrawn)
    assert screen.text() == ["abcde", "XY", ""]


def test_history_keeps_attributes_and_drops_trailing_blanks() -> None:
    screen = Screen(2, 10, history=2)
    screen.feed(b"zero\r\none\r\n\x1b[31mtwo\x1b[m\r\nthree\r\nfour")
    assert screen.history(5) == b"one\r\n\x1b[0;31mtwo\x1b[0m\r\n"
    assert screen.history(1) == b"\x1b[0;31mtwo\x1b[0m\r\n"
    # The alternate screen does not scroll into history.
    screen.feed(b"\x1b[?1049h1\r\n2\r\n3\r\n\x1b[?1049l")
    assert screen.history(5) == b"one\r\n\x1b[0;31mtwo\x1b[0m\r\n"
    # Lines scrolled just before the switch, in the same chunk, are not lost.
    screen.feed(b"\r\nfive\r\nsix\x1b[?1049h")
    assert screen.history(5) == b"three\r\nfour\r\n"
    # ED 3 clears it.
    screen.feed(b"\x1b[?1049l\r\nseven\x1b[3J\r\neight\r\n")
    assert screen.history(5) == b"six\r\nseven\r\n"


def test_skip_makes_the_screen_approximate_until_a_full_redraw() -> None:
    for redraw in [b"\x1b[2J", b"\x1b[?1049h", b"\x1bc"]:
        screen = fed(4, 10, [b"hello\x1b[3"])
        assert not screen.approximate
        screen.skip(1000)
        assert screen.approximate
        assert screen.position == len(b"hello\x1b[3") + 1000
        screen.feed(b"1mmore")  # the cut sequence was cancelled, not completed
        assert screen.approximate
        assert screen.cells()[0][5] == ("1", "\x1b[0m")
        screen.feed(b"x" + redraw + b"y")
        assert not screen.approximate
    screen = fed(4, 10, [b"\x1b[?1049h"])
    screen.skip(10)
    screen.feed(b"\x1b[?1049l")
    assert not screen.approximate


def test_resize_reflows_and_a_huge_window_is_bounded() -> None:
    screen = fed(3, 10, [b"0123456789abc\r\nxy"])
    screen.resize(3, 5)
    assert (screen.rows, screen.cols) == (3, 5)
    assert screen.text() == ["56789", "abc", "xy"]
    assert screen.history(5) == b"01234\r\n"
    screen.resize(60000, 60000)
    assert screen.approximate
    assert len(screen.text()) == 1000
    screen.resize(3, 5)
    assert not screen.approximate


# --- queries -----------------------------------------------------------------------------------

#: Streams in which every cut-short sequence is cancelled (CAN), so that the only
#: queries are the query tokens: each token is tagged with whether it is one.
TAGGED = st.lists(
    st.one_of(
        st.tuples(st.one_of(TEXT, UNICODE, CONTROLS, INVALID, COMPLETE), st.just(False)),
        st.tuples(PARTIAL.map(lambda p: p + b"\x18"), st.just(False)),
        st.tuples(QUERY, st.just(True)),
    ),
    max_size=60,
)


@PROPERTY
@given(TAGGED, CUTS)
def test_scanner_finds_exactly_the_queries(
    tokens: list[tuple[bytes, bool]], cuts: list[int]
) -> None:
    data = b"".join(t for t, _ in tokens)
    expected = []
    pos = 0
    for token, is_query in tokens:
        pos += len(token)
        if is_query:
            expected.append((token, pos))
    scanner = QueryScanner()
    found = []
    offset = 0
    for chunk in chunked(data, cuts):
        found += [(q.raw, offset + q.end) for q in scanner.feed(chunk)]
        offset += len(chunk)
    assert found == expected


@PROPERTY
@given(STREAM, CUTS)
def test_scanner_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    scanner = QueryScanner()
    found = []
    offset = 0
    for chunk in chunked(data, cuts):
        found += [
            (offset + q.end - len(q.raw), offset + q.end, q.kind) for q in scanner.feed(chunk)
        ]
        offset += len(chunk)
    assert found == find_queries(data)


@PROPERTY
@given(STREAM, st.data())
def test_a_primed_scanner_finds_the_queries_that_end_after_the_cut(
    data: bytes, draw: st.DataObject
) -> None:
    # A successor daemon goes on from the ring its predecessor filled: it
    # answers a query cut in two by the handover, and none answered before.
    cut = draw.draw(st.integers(0, len(data)))
    scanner = QueryScanner()
    scanner.prime(b"x" * 1000 + data[:cut])  # more than it needs: it keeps the end
    found = [(cut + q.end - len(q.raw), cut + q.end, q.kind) for q in scanner.feed(data[cut:])]
    assert found == [q for q in find_queries(data) if q[1] > cut]


@PROPERTY
@given(STREAM)
def test_the_fast_scan_finds_what_the_full_pattern_finds(data: bytes) -> None:
    # The scanners look for candidates without groups, then parse them.
    reference = []
    for m in queries_impl._FULL.finditer(data):
        kind = queries_impl._kind(data, m)
        if kind is not None:
            reference.append((m.start(), m.end(), kind))
    assert find_queries(data) == reference
    tracker_reference = [(m.start(), m.end()) for m in modes_impl._FULL.finditer(data)]
    assert [(m.start(), m.end()) for m in modes_impl._SCAN.finditer(data)] == tracker_reference


@PROPERTY
@given(STREAM, CUTS, SIZES)
def test_answers_come_from_the_screen_just_after_each_query(
    data: bytes, cuts: list[int], size: tuple[int, int]
) -> None:
    identity = Identity(colors={10: "rgb:ffff/ffff/ffff", 11: "rgb:0000/0000/0000"})
    expected = b""
    for _, end, kind in find_queries(data):
        ref = fed(*size, [data[:end]])
        expected += answer(_query(kind, data[:end]), ref, identity)
    responder = Responder(Screen(*size), identity)
    got = b"".join(responder.feed(chunk) for chunk in chunked(data, cuts))
    assert got == expected
    assert_same_screen(responder.screen, fed(*size, [data]))


def _query(kind: QueryKind, upto: bytes) -> Query:
    """The last query in ``upto``, as the scanner reports it."""
    (query,) = QueryScanner().feed(upto)[-1:]
    assert query.kind is kind
    return query


def respond(data: bytes, rows: int = 24, cols: int = 80, identity: Identity | None = None) -> bytes:
    responder = Responder(Screen(rows, cols), identity or Identity())
    return responder.feed(data)


@pytest.mark.parametrize(
    ("output", "reply"),
    [
        (b"\x1b[5;10H\x1b[6n", b"\x1b[5;10R"),
        (b"abc\x1b[6n", b"\x1b[1;4R"),
        (b"\x1b[6n\r\nxy\x1b[6n", b"\x1b[1;1R\x1b[2;3R"),
        (b"\x1b[?6n", b"\x1b[?1;1;1R"),
        # busybox resize and vi: where does the cursor end up?
        (b"\x1b7\x1b[r\x1b[999;999H\x1b[6n\x1b8", b"\x1b[24;80R"),
        # Pending wrap: the cursor shows on the last column.
        (b"\x1b[1;79Hab\x1b[6n", b"\x1b[1;80R"),
        # Origin mode: relative to the scroll region.
        (b"\x1b[5;10r\x1b[?6h\x1b[2;3H\x1b[6n", b"\x1b[2;3R"),
        (b"\x1b[5n", b"\x1b[0n"),
        (b"\x1b[c\x1b[0c\x1bZ", b"\x1b[?1;2c" * 3),
        (b"\x1b[>c\x1b[>0c", b"\x1b[>84;0;0c" * 2),
        (b"\x1b[1c\x1b[>1c", b""),
        (b"\x1b[>0q\x1b[>q", b"\x1bP>|consoled 0.1.0\x1b\\" * 2),
        (b"\x1b[18t\x1b[19t", b"\x1b[8;24;80t\x1b[9;24;80t"),
        (b"\x1b[14t\x1b[16t", b"\x1b[4;768;1280t\x1b[6;32;16t"),
        (b"\x1b[11t\x1b[13t", b"\x1b[1t\x1b[3;0;0t"),
        (b"\x1b[20t\x1b[21t\x1b[15t", b""),
        (b"\x1b[?1h\x1b[?1$p\x1b[?1049$p\x1b[?9999$p", b"\x1b[?1;1$y\x1b[?1049;2$y\x1b[?9999;0$y"),
        (b"\x1b[4h\x1b[4$p\x1b[20$p", b"\x1b[4;1$y\x1b[20;2$y"),
        (b"\x1b[?1000h\x1b[?1000$p\x1b[?1002h\x1b[?1000$p", b"\x1b[?1000;1$y\x1b[?1000;2$y"),
        (b"\x1b]10;?\x07\x1b]11;?\x1b\\", b""),
        (b"\x1b]52;c;?\x07\x1b]4;1;?\x07\x1bP$q q\x1b\\\x1bP+q544e\x1b\\\x1b[?u\x1b[?4m", b""),
    ],
)
def test_answers(output: bytes, reply: bytes) -> None:
    assert respond(output) == reply
    # The same, byte by byte.
    responder = Responder(Screen(24, 80))
    assert b"".join(responder.feed(output[i : i + 1]) for i in range(len(output))) == reply


def test_colour_answers_when_the_colours_are_known() -> None:
    identity = Identity(colors={10: "rgb:aaaa/bbbb/cccc", 11: "rgb:0000/0000/0000"})
    assert respond(b"\x1b]11;?\x1b\\", identity=identity) == b"\x1b]11;rgb:0000/0000/0000\x1b\\"
    assert respond(b"\x1b]10;?;?\x07", identity=identity) == (
        b"\x1b]10;rgb:aaaa/bbbb/cccc\x07\x1b]11;rgb:0000/0000/0000\x07"
    )
    assert respond(b"\x1b]12;?\x07", identity=identity) == b""


def test_a_query_in_skipped_output_is_not_answered() -> None:
    responder = Responder(Screen(24, 80))
    assert responder.feed(b"x\x1b[") == b""
    responder.skip(100)
    assert responder.feed(b"6n") == b""
    assert responder.screen.approximate


# --- the output filter ---------------------------------------------------------------------


def filtered(data: bytes, cuts: list[int]) -> bytes:
    out = OutputFilter()
    return b"".join(out.feed(chunk) for chunk in chunked(data, cuts)) + out.flush()


@PROPERTY
@given(TAGGED, CUTS)
def test_filter_removes_exactly_the_queries(
    tokens: list[tuple[bytes, bool]], cuts: list[int]
) -> None:
    data = b"".join(t for t, _ in tokens)
    assert filtered(data, cuts) == b"".join(t for t, is_query in tokens if not is_query)


@PROPERTY
@given(STREAM, CUTS)
@example(data=b"\x1b[?\rm", cuts=[])  # found with 12,000 examples: a CR inside a query
def test_filter_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    expected = bytearray()
    pos = 0
    for start, end, _ in find_queries(data):
        # The controls a terminal executes inside a query stay (see the next test).
        expected += data[pos:start] + inert_controls(data[start:end])
        pos = end
    expected += data[pos:]
    assert filtered(data, cuts) == expected
    assert not find_queries(filtered(data, cuts))


def test_filter_keeps_controls_inside_a_query() -> None:
    # A terminal executes the LF in the middle of the CSI and answers the query.
    assert filtered(b"a\x1b[6\nnb", []) == b"a\nb"


def test_filter_holds_only_what_may_be_a_query() -> None:
    out = OutputFilter()
    assert out.feed(b"abc\x1b[") == b"abc"
    assert out.feed(b"31mdef\x1b]11;") == b"\x1b[31mdef"
    assert out.feed(b"?\x1b") == b""
    assert out.feed(b"\\ghi") == b"ghi"
    assert out.feed(b"\x1b]0;a title\x07") == b"\x1b]0;a title\x07"


# --- modes and the reset sequence --------------------------------------------------------------


def test_reset_sequence_turns_each_mode_back() -> None:
    out = OutputFilter()
    out.feed(b"\x1b[?1049h\x1b[?25l\x1b[?1h\x1b[?1000h\x1b[?2004h")
    assert out.reset_sequence() == (b"\x1b[?1049l\x1b[?25h\x1b[?1l\x1b[?1000l\x1b[?2004l")
    out.feed(b"\x1b=\x1b[?1006;1004h\x1b[2;10r\x1b(0\x0e\x1b[1;32m\x1b[>4;2m\x1b[6 q")
    assert out.reset_sequence() == (
        b"\x1b[?1049l\x1b[?25h\x1b[?1l\x1b>\x1b[?1000l\x1b[?1006l\x1b[?1004l\x1b[?2004l"
        b"\x1b[0 q\x1b[>4m\x1b(B\x0f\x1b7\x1b[r\x1b8\x1b[0m"
    )


def test_nothing_to_reset_after_modes_set_and_cleared() -> None:
    out = OutputFilter(rows=24)
    out.feed(
        b"\x1b[?1049h\x1b[?25l\x1b[?1h\x1b=\x1b[?1000h\x1b[?2004h\x1b[31m\x1b[5;10r\x1b(0"
        b"\x1b[?1049l\x1b[?25h\x1b[?1l\x1b>\x1b[?1000l\x1b[?2004l\x1b[m\x1b[1;24r\x1b(B"
    )
    assert out.reset_sequence() == b""
    # RIS resets everything (but the title).
    out.feed(b"\x1b[?1049h\x1b[?1002h\x1b[7m\x0e\x1b]2;x\x07\x1bc")
    assert out.reset_sequence() == b""
    assert out.modes.title == b"x"


def test_vim_like_session() -> None:
    start = (
        b"\x1b[?1049h\x1b[22;0;0t\x1b[>4;2m\x1b[?1h\x1b=\x1b[H\x1b[2J\x1b[?2004h\x1b[?1004h"
        b"\x1b[?1006;1000h\x1b[?12h\x1b[?25l\x1b[1;24r"
    )
    out = OutputFilter(rows=24)
    out.feed(start)
    assert out.reset_sequence() == (
        b"\x1b[?1049l\x1b[?25h\x1b[?1l\x1b>\x1b[?1000l\x1b[?1006l"
        b"\x1b[?12l\x1b[?1004l\x1b[?2004l\x1b[>4m"
    )
    out.feed(
        b"\x1b[?25h\x1b[?1004l\x1b[?2004l\x1b[?1l\x1b>\x1b[?1006;1000l\x1b[?12l"
        b"\x1b[>4;m\x1b[23;0;0t\x1b[?1049l"
    )
    assert out.reset_sequence() == b""


@PROPERTY
@given(STREAM, CUTS)
def test_mode_tracker_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    whole, pieces = ModeTracker(rows=24), ModeTracker(rows=24)
    whole.feed(data)
    for chunk in chunked(data, cuts):
        pieces.feed(chunk)
    assert whole.modes == pieces.modes
    assert whole.redraws == pieces.redraws


@PROPERTY
@given(STREAM, CUTS)
@example(data=b"\x1b]2;\x0e", cuts=[])  # found by a CI run: SO inside an unfinished title
@example(data=b"\x1b[\x0e", cuts=[])  # and SO inside an unfinished CSI
def test_the_reset_sequence_leaves_a_fresh_terminal(data: bytes, cuts: list[int]) -> None:
    out = OutputFilter(rows=24)
    written = b"".join(out.feed(chunk) for chunk in chunked(data, cuts)) + out.flush()
    after = ModeTracker(rows=24)
    # CAN ends whatever sequence the output left unfinished, as it would on a terminal.
    after.feed(written + b"\x18" + out.reset_sequence())
    assert after.modes == TerminalModes(title=after.modes.title)


def test_filter_starts_from_a_rendered_screen() -> None:
    screen = fed(24, 80, [b"\x1b[?1049h\x1b[?25l\x1b[?1002;1006h\x1b=\x1b[3;20r\x1b[1m"])
    from_render = OutputFilter(rows=24)
    from_render.feed(screen.render())
    # The render enters the alternate screen with 1047 (no cursor saved), so
    # that is how to leave it.
    assert from_render.reset_sequence() == (
        b"\x1b[?1047l\x1b[?25h\x1b>\x1b[?1002l\x1b[?1006l\x1b7\x1b[r\x1b8\x1b[0m"
    )
    from_modes = OutputFilter(from_render.modes, rows=24)
    assert from_modes.reset_sequence() == from_render.reset_sequence()


@pytest.mark.parametrize(
    ("data", "shifted"),
    [
        (b"\x0e", True),
        (b"\x0e\x0f", False),
        (b"\x1b]2;\x0e\x07", False),  # in a title: not a shift, as on a terminal
        (b"\x1b]2;\x0e\x18", False),  # in a title that CAN cancelled
        (b"\x1b]8;;\x0e\x1b\\", False),  # in a hyperlink
        (b"\x1bP\x0e\x1b\\", False),  # in a DCS
        (b"\x1b]2;x\x07\x0e", True),  # after the title
        (b"\x0e\x1b]2;\x0f\x07", True),  # the SI is in the title
        (b"\x1b[\x0e", True),  # executed inside a CSI, even an unfinished one
        (b"\x1b]2;\x0e", False),  # in a title not finished yet
    ],
)
def test_shift_out_counts_only_outside_string_sequences(data: bytes, shifted: bool) -> None:
    # Was: any SO or SI in the output counted, also inside a title, and the
    # reset on detach disagreed with what the terminal had done.
    tracker = ModeTracker(rows=24)
    tracker.feed(data)
    assert tracker.modes.shifted is shifted


def test_reset_sequence_of_default_modes_is_empty() -> None:
    assert reset_sequence(TerminalModes()) == b""


# --- the daemon's session state (consoled.server.screenstate) --------------------------------


def session_state(
    data: bytes,
    cuts: list[int],
    looks: set[int],
    size: tuple[int, int],
    *,
    scrollback: int,
    freezes: frozenset[int] = frozenset(),
) -> tuple[SessionScreen, Record, bytes]:
    """``data`` through the daemon's path: each read into the ring, queries
    answered as they arrive, an attach catching the screen up after the reads
    in ``looks``, the screen frozen after those in ``freezes``. Returns the
    state, its ring and every answer given."""
    record = Record.create(scrollback, {})
    state: SessionScreen | None = None
    watch = QueryWatch()
    answers = b""
    for i, chunk in enumerate(chunked(data, cuts)):
        record.append(chunk)  # as Session.publish
        ends = watch.ends(chunk)
        if ends:
            start = record.end - len(chunk)
            state = state or SessionScreen(*size, record.start)
            answers += state.catch_up(record, upto=start + ends[-1], answer_from=start)
        if i in looks:
            state = state or SessionScreen(*size, record.start)
            state.catch_up(record)
        if i in freezes and state is not None:
            state.freeze(record)
    return state or SessionScreen(*size, record.start), record, answers


@PROPERTY
@given(STREAM, CUTS, SIZES, st.sets(st.integers(0, 60)), st.frozensets(st.integers(0, 60)))
@example(  # found with 12,000 examples: frozen just after a title, mid-character
    data=b"00000000000\x1b]2;00000000000\x07\xc3\xa9",
    cuts=[28],
    size=(2, 2),
    looks={0},
    freezes=frozenset([0]),
)
def test_the_session_state_draws_what_a_fresh_emulator_shows(
    data: bytes,
    cuts: list[int],
    size: tuple[int, int],
    looks: set[int],
    freezes: frozenset[int],
) -> None:
    state, record, answers = session_state(
        data, cuts, looks, size, scrollback=1 << 20, freezes=freezes
    )
    try:
        drawn = state.render(record)
        render, approximate = drawn.drawn, drawn.approximate
    finally:
        record.close()
    assert not approximate
    original = fed(*size, [data])
    assert_same_screen(fed(*size, [render]), original)
    # Each query answered once, from the screen as it was just after it.
    assert answers == Responder(Screen(*size)).feed(data)


@pytest.mark.parametrize(
    ("tail", "clean"),
    [
        (b"", True),
        (b"text", True),
        (b"\x1b", False),
        (b"\x1b[", False),
        (b"\x1b[10;1", False),
        (b"\x1b[10;1H", True),
        (b"\x1b[?1049hx", True),
        (b"\x1b]0;title", False),
        (b"\x1b]0;title\x07", True),
        (b"\x1b]0;title\x07" + "é".encode()[:1], False),  # a character cut after the title
        (b"\x1b]0;title\x1b", False),
        (b"\x1b]0;title\x1b\\", True),
        (b"\x1bP$q q", False),
        (b"\x1b(", False),
        (b"\x1b(B", True),
        (b"\x1b7", True),
        ("é".encode()[:1], False),
        ("é".encode(), True),
        ("日".encode()[:2], False),
        ("日".encode(), True),
        ("😀".encode()[:3], False),
        (b"ok" + "😀".encode(), True),
    ],
)
def test_a_screen_is_frozen_only_where_the_output_ends_clean(tail: bytes, clean: bool) -> None:
    assert ends_clean(tail) is clean


def test_a_frozen_screen_thaws_as_it_was() -> None:
    record = Record.create(4096, {})
    try:
        state = SessionScreen(5, 20, 0)
        record.append(b"\x1b[?1049h\x1b[1;31mred\x1b[3;4r\x1b[?25l\x1b[2;5H")
        before = state.render(record).drawn
        assert state.freeze(record) and state.frozen
        drawn = state.render(record)
        after, approximate = drawn.drawn, drawn.approximate
        assert not approximate and after == before
        record.append(b"\x1b[")  # cut short: not now
        state.catch_up(record)
        assert not state.freeze(record)
        record.append(b"6n")
        assert state.catch_up(record, answer_from=record.end - 2) == b"\x1b[2;5R"
        assert state.freeze(record)
    finally:
        record.close()


@pytest.mark.parametrize(
    ("setup", "after"),
    [
        (b"\x1b[3g\x1b[1;7H\x1bH\x1b[1;13H\x1bH\x1b[1;1H", b"\r\tA\tB\tC"),
        (b"\x1b[3;4H\x1b[1;31m\x1b7\x1b[0m\x1b[1;1Hab", b"\x1b8XY"),
        (b"\x1b[2;5H\x1b[?1049hfoo\x1b[3;3H\x1b7\x1b[1;1H", b"\x1b8Z\x1b[?1049lW"),
        (b"\x1b)0\x0e", b"qqq\x0fqq"),
        (b"\x1b[2;4r\x1b[?6h\x1b7\x1b[1;1H", b"A\x1b8B"),
    ],
    ids=["tab stops", "saved cursor and pen", "saved cursor on both screens", "shift", "origin"],
)
def test_a_thawed_screen_goes_on_as_the_first_would(setup: bytes, after: bytes) -> None:
    # Freezing and handing over keep only a render: what it does not carry
    # would show in the next output, not in the render itself.
    screen = fed(5, 20, [setup])
    thawed = Screen.from_render(5, 20, screen.render(), approximate=False)
    screen.feed(after)
    thawed.feed(after)
    assert_same_screen(screen, thawed)


def test_a_flood_of_queries_costs_no_more_than_the_budget() -> None:
    now = [0.0]
    budget = EmulationBudget(share=0.1, burst=0.001, clock=lambda: now[0])
    record = Record.create(1 << 20, {})
    try:
        state = SessionScreen(24, 80, 0)
        flood = b"x" * 1_000_000 + b"\r\nprompt\x1b[6n"
        record.append(flood)
        answers = state.catch_up(record, answer_from=0, budget=budget)
        # Answered all the same, from what it could afford to emulate.
        assert answers == b"\x1b[24;7R"
        assert budget.skipped > 900_000
        assert state.screen.approximate
        # Time passes, the budget refills: the next catch-up is whole again.
        budget.burst = 0.1
        now[0] += 1.0
        record.append(b"\x1b[2J" + b"y" * 50_000 + b"\x1b[Habc\x1b[6n")
        skipped = budget.skipped
        assert state.catch_up(record, answer_from=len(flood), budget=budget) == b"\x1b[1;4R"
        assert budget.skipped == skipped
        assert not state.screen.approximate
    finally:
        record.close()


def test_the_session_state_skips_a_flood_and_says_so_until_a_redraw() -> None:
    record = Record.create(64, {})
    try:
        state = SessionScreen(4, 10, record.start)
        record.append(b"\x1b[31m" + b"y\r\n" * 500)  # past the ring: never fed
        drawn = state.render(record)
        render, approximate = drawn.drawn, drawn.approximate
        assert approximate
        assert fed(4, 10, [render]).text()[:3] == ["y"] * 3
        # The program redraws: exact again.
        record.append(b"\x1b[H\x1b[2Jready")
        drawn = state.render(record)
        render, approximate = drawn.drawn, drawn.approximate
        assert not approximate
        assert fed(4, 10, [render]).text()[0] == "ready"
    finally:
        record.close()


# --- a real terminal: tmux ---------------------------------------------------------------------

TMUX_WAIT = 10.0
Cells = list[list[tuple[str, str]]]


@dataclass
class Pane:
    """What a tmux pane shows: its flags (``PANE_FORMAT``) and both screens' cells."""

    flags: dict[str, str]
    cells: Cells
    other: Cells | None


class Tmux:
    """A private tmux server; every command is bounded in time."""

    def __init__(self, tmp: Path) -> None:
        self.socket = tmp / "tmux.sock"
        self.tmp = tmp
        self.panes = 0

    def run(self, *args: str) -> str:
        assert TMUX is not None
        proc = subprocess.run(
            [TMUX, "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=TMUX_WAIT,
            check=True,
        )
        return proc.stdout

    def show(self, data: bytes, rows: int, cols: int) -> Pane:
        """Write ``data`` raw into a new pane; what it shows once drawn."""
        self.panes += 1
        name = f"p{self.panes}"
        path = self.tmp / f"{name}.out"
        path.write_bytes(data)
        done = self.tmp / f"{name}.done"
        self.run(
            "new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows),
            f"stty raw -echo; cat {path}; touch {done}; exec sleep 600",
        )  # fmt: skip
        wait_for(done.exists)
        # tmux reads the pane asynchronously: wait until two looks agree.
        previous = None
        deadline = time.monotonic() + TMUX_WAIT
        while time.monotonic() < deadline:
            pane = self.pane(name, rows, cols)
            if pane == previous:
                self.run("kill-session", "-t", name)
                return pane
            previous = pane
            time.sleep(0.05)
        raise AssertionError(f"pane {name} never settled")

    def pane(self, name: str, rows: int, cols: int) -> Pane:
        flags = self.run("display-message", "-p", "-t", name, PANE_FORMAT)
        screen = self.run("capture-pane", "-p", "-e", "-N", "-t", name)
        other = self.run("capture-pane", "-p", "-e", "-N", "-a", "-q", "-t", name)
        return Pane(
            parse_flags(flags),
            cells_of(screen, rows, cols),
            cells_of(other, rows, cols) if other else None,
        )


def cells_of(capture: str, rows: int, cols: int) -> Cells:
    """What a ``capture-pane -e`` shows, cell by cell.

    capture-pane writes attributes as changes from the cell before and marks
    line-drawing characters with SO: read back by a screen, two captures of
    panes that look the same give the same cells. It does not show the colour
    of erased cells, so blanks are compared without attributes.
    """
    lines = capture.encode().split(b"\n")[:rows]
    return blanks_plain(fed(rows, cols, [b"\x1b)0" + b"\r\n".join(lines)]).cells())


def blanks_plain(cells: Cells) -> Cells:
    return [[(c, "") if c == " " else (c, a) for c, a in row] for row in cells]


def expected_flags(screen: Screen) -> dict[str, str]:
    """The tmux flags of a pane that shows ``screen``."""
    modes, cursor = screen.modes, screen.cursor
    mouse = "/".join(
        str(int(flag))
        for flag in (
            modes.mouse_tracking == 1000,
            modes.mouse_tracking == 1002,
            modes.mouse_tracking == 1003,
            1006 in modes.mouse_encodings,
        )
    )
    top, bottom = modes.scroll_region or (1, screen.rows)
    return {
        "cursor": f"{cursor.col},{cursor.row}",
        "alt": str(int(modes.alternate is not None)),
        "visible": str(int(cursor.visible)),
        "mouse": mouse,
        "keys": f"{int(modes.cursor_keys_app)}/{int(modes.keypad_app)}",
        "region": f"{top - 1},{(bottom or screen.rows) - 1}",
    }


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TMUX_WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture
def tmux(short_tmp: Path) -> Iterator[Tmux]:
    """A tmux server of our own, its socket in a short directory (socket paths
    must fit in 108 bytes), killed however the test ends."""
    if TMUX is None:
        pytest.fail("tmux is not installed: scripts/setup installs it")
    server = Tmux(short_tmp)
    try:
        yield server
    finally:
        subprocess.run(
            [TMUX, "-S", str(server.socket), "kill-server"],
            capture_output=True,
            timeout=TMUX_WAIT,
            check=False,
        )


def random_stream(seed: int) -> bytes:
    """Common sequences, at random (no queries, nothing cut short)."""
    rng = random.Random(seed)
    choices = [
        b"\r\n", b"\n", b"\r", "é日│".encode(), b"\x1b[m", b"\x1b[1;31m", b"\x1b[4;44m",
        b"\x1b[7m", b"\x1b[38;5;200m", b"\x1b[48;2;10;20;30m", b"\x1b[K", b"\x1b[1K", b"\x1b[J",
        b"\x1b[3;15r", b"\x1b[r", b"\x1bD", b"\x1b[2S", b"\x1bM", b"\x1b[2J", b"\x1b[?25l",
        b"\x1b[?25h", b"\x1b7", b"\x1b8", b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[?1h\x1b=",
        b"\x1b[?1002;1006h", b"\x1b[?2004h", b"\x1b]2;title %d\x07" % seed, b"\x1b(0", b"\x1b(B",
        b"\x1b[3P", b"\x1b[2@", b"\x1b[4X", b"\x1b[2L", b"\x1b[M", b"\t", b"\x1b[5G",
    ]  # fmt: skip
    parts = []
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            parts.append(bytes(rng.choice(b"abcdefghij  XYZ") for _ in range(rng.randrange(1, 30))))
        elif kind == 1:
            parts.append(b"\x1b[%d;%dH" % (rng.randrange(1, 30), rng.randrange(1, 90)))
        else:
            parts.append(rng.choice(choices))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(8))
def test_tmux_draws_the_render_as_the_screen_holds_it(tmux: Tmux, seed: int) -> None:
    """The render, in a real terminal: every cell, the cursor and the modes."""
    rows, cols = 24, 80
    screen = fed(rows, cols, [random_stream(seed)])
    pane = tmux.show(screen.render(), rows, cols)
    assert pane.cells == blanks_plain(screen.cells())
    flags = expected_flags(screen)
    assert {key: pane.flags[key] for key in flags} == flags
    if screen.title is not None:
        assert pane.flags["title"] == screen.title


#: Output of the kind real programs write, where avt and tmux agree.
TMUX_STREAMS = {
    "shell": (
        b"$ ls --color\r\n\x1b[0m\x1b[01;34mbin\x1b[0m  \x1b[01;32mrun.sh\x1b[0m  notes.txt\r\n"
        + b"".join(b"line %d of some log output\r\n" % i for i in range(40))
        + "$ echo héllo 日本\r\nhéllo 日本\r\n$ ".encode()
    ),
    "vi": (
        b"prompt$ vi\r\n\x1b[?1049h\x1b[22;0;0t\x1b[?1h\x1b=\x1b[H\x1b[2J\x1b[?2004h"
        b"\x1b[?1006;1000h\x1b[1;23r\x1b[23;1H\x1b[94m~\x1b[m\r\n"
        + b"\x1b[94m~\x1b[m\r\n"
        * 5
        + b"\x1b[r\x1b[24;1H\x1b[1m-- INSERT --\x1b[m\x1b[24;60H1,1    All\x1b[1;1Hfirst line"
        b"\x1b]2;vi - file\x07\x1b[?25l\x1b[3;5r\x1b[4;1H"
    ),
    "top": b"".join(
        b"\x1b[H"
        + b"".join(
            b"\x1b[%d;1H\x1b[7m %5d root  20  0  %d S  0.0 proc\x1b[m\x1b[K" % (r + 1, r, n * r)
            for r in range(20)
        )
        for n in range(3)
    )
    + b"\x1b[21;1H\x1b[?25l",
    "wrap": b"x" * 79 + b"\x1b[1;1H" + b"a" * 80 + b"\x1b[2;80H" + b"\x1b(0lqqk\x1b(B",
    "less": (
        b"".join(b"old line %d\r\n" % i for i in range(30))
        + b"\x1b[?1049h\x1b[?1h\x1b=\r"
        + b"".join(b"page line %d\r\n" % i for i in range(23))
        + b"\x1b[7m(END)\x1b[27m\x1b[K"
    ),
}


@pytest.mark.parametrize("name", sorted(TMUX_STREAMS))
def test_tmux_shows_the_render_as_it_showed_the_output(tmux: Tmux, name: str) -> None:
    rows, cols = 24, 80
    data = TMUX_STREAMS[name]
    original = tmux.show(data, rows, cols)
    rendered = tmux.show(fed(rows, cols, [data]).render(), rows, cols)
    assert rendered == original


def test_tmux_keeps_the_tab_stops_the_program_set(tmux: Tmux) -> None:
    # `tabs 5,9` or a TUI's own table: output written after the render (the
    # attached client's terminal) must land where it did on the first terminal.
    rows, cols = 5, 40
    data = b"\x1b[3g\x1b[1;5H\x1bH\x1b[1;12H\x1bH\x1b[1;1Hset"
    after = b"\r\n\tA\tB\tC"
    original = tmux.show(data + after, rows, cols)
    rendered = tmux.show(fed(rows, cols, [data]).render() + after, rows, cols)
    assert rendered == original
    # Stops at columns 5 and 12 only: the third tab goes to the last column.
    assert "".join(c for c, _ in original.cells[1]) == "    A      B" + " " * 27 + "C"


# --- what avt does differently from tmux (pinned: an upgrade that changes one shows) -------


def test_avt_erases_with_the_whole_pen() -> None:
    # tmux and xterm erase with the background colour only: no reverse video
    # bar after ESC [ 7 m ESC [ K.
    screen = fed(2, 10, [b"ab\x1b[7m\x1b[K\x1b[4m\x1b[2X"])
    assert screen.cells()[0][2:5] == [(" ", "\x1b[0;4;7m")] * 2 + [(" ", "\x1b[0;7m")]


def test_avt_gives_combining_marks_a_cell() -> None:
    # tmux puts U+0301 on the e: the rest of the line is one column further right.
    screen = fed(2, 10, ["e\u0301x".encode()])
    assert screen.cursor.col == 3


def test_avt_inserts_lines_outside_the_scroll_region() -> None:
    # tmux and xterm ignore IL with the cursor outside the scroll region.
    screen = fed(4, 10, [b"a\r\nb\r\nc\x1b[2;3r\x1b[1;1H\x1b[2L"])
    assert screen.text() != ["a", "b", "c", ""]


def test_avt_ignores_a_scroll_region_below_the_screen() -> None:
    # tmux and xterm end it at the last row.
    screen = fed(24, 80, [b"\x1b[5;999r"])
    assert screen.modes.scroll_region is None
