"""Pure logic, no I/O: session names, scrollback, size policy, detach keys, CRI logs."""

from __future__ import annotations

import calendar
import gc
import itertools
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consoled.client.container import ContainerError, ExecUser, resolve, runtime_message
from consoled.client.detachkeys import (
    DEFAULT_DETACH_KEYS,
    DEFAULT_WAIT,
    DetachKeysError,
    DetachMatcher,
    describe,
    parse_detach_keys,
)
from consoled.io.scrollback import COALESCE, Scrollback
from consoled.names import InvalidName, SessionName, check_part
from consoled.server import cri
from consoled.server.daemon import _collector_paused
from consoled.server.hub import ClientHub
from consoled.server.sizepolicy import (
    MAX_DIMENSION,
    ClientSize,
    SizePolicy,
    choose_size,
    size_error,
    valid_size,
)
from consoled.server.subscriber import Subscriber

# --- session names ------------------------------------------------------------------------

VALID_PARTS = [
    "a",
    "Z",
    "0",
    "web1",
    "a_b.c+d-e",
    "9-._+",
    "x" * 128,
    "4f7c2a9b1e0d3c6f8a5b2e9d7c1f0a3b6e8d2c5f9a1b4e7d0c3f6a9b2e5d8c1f",
]
INVALID_PARTS = [
    "",
    "_a",
    ".a",
    "-a",
    "+a",
    "a b",
    "a/b",
    "a@b",
    "a:b",
    "a\n",
    "\na",
    "é",
    "abé",
    "x" * 129,
    " a",
]


@pytest.mark.parametrize("part", VALID_PARTS)
def test_valid_parts(part: str) -> None:
    assert check_part(part) == part
    assert SessionName.parse(part) == SessionName(part)
    assert SessionName.parse(f"{part}/{part}") == SessionName(part, part)


@pytest.mark.parametrize("part", INVALID_PARTS)
def test_invalid_parts(part: str) -> None:
    with pytest.raises(InvalidName, match="exec name") as excinfo:
        check_part(part, "exec name")
    assert repr(part) in str(excinfo.value)
    assert "128" in str(excinfo.value)
    # "a/b" is a fine session name, but never a part of one.
    alone = () if part == "a/b" else (part,)
    for text in (*alone, f"ok/{part}", f"{part}/ok"):
        with pytest.raises(InvalidName):
            SessionName.parse(text)


def test_length_limit_is_128_per_part() -> None:
    longest = "a" * 128
    name = SessionName.parse(f"{longest}/{longest}")
    assert len(str(name)) == 257
    with pytest.raises(InvalidName, match="container id"):
        SessionName.parse("a" * 129)
    with pytest.raises(InvalidName, match="exec name"):
        SessionName.parse(f"{longest}/{'b' * 129}")


@pytest.mark.parametrize(
    "text", ["x" * 4096, "x/" * 2048, "ok/" + "\x00" * 4090, "\U000e0001" * 4096]
)
def test_a_long_invalid_name_is_quoted_short(text: str) -> None:
    # The message goes back to the client in an `error`, whose text is at most
    # 4,096 characters (the fuzz test sent a 4,096-character name; the client
    # refused the daemon's answer as bad_message).
    with pytest.raises(InvalidName) as excinfo:
        SessionName.parse(text)
    message = str(excinfo.value)
    assert len(message) < 2500, len(message)
    assert f"({len(text)} characters)" in message or f"({len(text) - 3} characters)" in message


@pytest.mark.parametrize("text", ["a/b/c", "a//b", "//", "a/b/", "/a/b"])
def test_at_most_one_slash(text: str) -> None:
    with pytest.raises(InvalidName, match="at most one '/'"):
        SessionName.parse(text)


@pytest.mark.parametrize(("text", "what"), [("/b", "container id"), ("a/", "exec name")])
def test_empty_part_around_the_slash(text: str, what: str) -> None:
    with pytest.raises(InvalidName, match=what):
        SessionName.parse(text)


def test_parse_and_str_and_file_stem() -> None:
    init = SessionName.parse("web")
    exec_ = SessionName.parse("web/bash-1")
    assert (init.id, init.exec) == ("web", None)
    assert (exec_.id, exec_.exec) == ("web", "bash-1")
    assert str(init) == "web"
    assert str(exec_) == "web/bash-1"
    assert init.file_stem == "web"
    assert exec_.file_stem == "web@bash-1"


parts = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}\Z")
names = st.builds(SessionName, parts, st.none() | parts)


@settings(max_examples=200, deadline=None)
@given(a=names, b=names)
def test_str_parses_back_and_file_stems_never_collide(a: SessionName, b: SessionName) -> None:
    assert SessionName.parse(str(a)) == a
    assert "/" not in a.file_stem
    assert (a.file_stem == b.file_stem) == (a == b)


def test_names_sort_init_before_execs() -> None:
    # SessionName is declared order=True; docs/protocol.md sorts a container's
    # init session before its execs.
    names = [
        SessionName("web", "b"),
        SessionName("db"),
        SessionName("web"),
        SessionName("web", "a"),
    ]
    assert sorted(names) == [
        SessionName("db"),
        SessionName("web"),
        SessionName("web", "a"),
        SessionName("web", "b"),
    ]


# --- scrollback ---------------------------------------------------------------------------


def joined(sb: Scrollback, n: int | None = None) -> bytes:
    return b"".join(sb.tail(n))


def last(data: bytes, n: int) -> bytes:
    """The last ``n`` bytes of ``data`` (``data[-0:]`` would be all of it)."""
    return data[max(0, len(data) - n) :] if n > 0 else b""


def test_scrollback_offsets_and_bound() -> None:
    sb = Scrollback(10)
    assert (sb.start, sb.end, len(sb)) == (0, 0, 0)
    sb.append(b"hello")
    assert (sb.start, sb.end, len(sb)) == (0, 5, 5)
    sb.append(b"")
    assert sb.end == 5
    sb.append(b" world!")
    assert (sb.start, sb.end, len(sb)) == (2, 12, 10)
    assert sb.getvalue() == b"llo world!"
    sb.append(b"x" * 25)
    assert (sb.start, sb.end, len(sb)) == (27, 37, 10)
    assert sb.getvalue() == b"x" * 10


def test_scrollback_capacity_zero_keeps_nothing_but_counts() -> None:
    sb = Scrollback(0)
    sb.append(b"abc")
    sb.append(b"d" * 5000)
    assert len(sb) == 0
    assert (sb.start, sb.end) == (5003, 5003)
    assert sb.tail() == []
    assert sb.getvalue() == b""


def test_scrollback_negative_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Scrollback(-1)


def test_tail_cuts_inside_chunks() -> None:
    sb = Scrollback(100_000)
    pieces = [b"a" * 5000, b"b" * 6000, b"c" * 4500]  # each >= COALESCE: its own chunk
    for p in pieces:
        sb.append(p)
    ref = b"".join(pieces)
    assert len(sb.tail()) == 3
    for n in [0, 1, 4499, 4500, 4501, 10499, 10500, 10501, 15499, 15500, 15501, 10**9]:
        got = sb.tail(n)
        assert b"".join(got) == last(ref, min(n, len(ref))), n
        assert all(got), "tail never returns empty chunks"
    assert sb.tail(None) == sb.tail(len(ref))
    assert b"".join(sb.tail(-5)) == b""


def test_tail_after_trimming_the_front() -> None:
    sb = Scrollback(7000)
    ref = b""
    for i in range(10):
        chunk = bytes([65 + i]) * (1000 + 700 * i)
        sb.append(chunk)
        ref += chunk
        for n in (1, 999, 3000, 6999, 7000):
            assert joined(sb, n) == last(ref[-7000:], n)


def test_one_byte_appends_are_coalesced() -> None:
    capacity = 64 * 1024
    sb = Scrollback(capacity)
    ref = bytearray()
    for i in range(3 * capacity):
        b = bytes([i % 251])
        sb.append(b)
        ref += b
    assert sb.getvalue() == bytes(ref[-capacity:])
    # One chunk per COALESCE bytes, plus one partly trimmed at the front.
    assert len(sb.tail()) <= capacity // COALESCE + 2
    assert all(len(c) <= COALESCE for c in sb.tail())


def test_large_append_after_small_ones() -> None:
    sb = Scrollback(10_000)
    sb.append(b"small")
    sb.append(b"L" * COALESCE)
    sb.append(b"s")
    assert sb.getvalue() == b"small" + b"L" * COALESCE + b"s"
    assert len(sb.tail()) == 3


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=0, max_value=3 * COALESCE),
    appends=st.lists(
        st.one_of(
            st.binary(max_size=8),
            st.binary(min_size=COALESCE - 8, max_size=COALESCE + 8),
            st.integers(min_value=1, max_value=3 * COALESCE).map(lambda n: bytes([n % 256]) * n),
        ),
        max_size=30,
    ),
    ns=st.lists(st.integers(min_value=0, max_value=4 * COALESCE), min_size=1, max_size=4),
)
def test_scrollback_matches_a_bytes_model(
    capacity: int, appends: list[bytes], ns: list[int]
) -> None:
    sb = Scrollback(capacity)
    ref = b""
    for data in appends:
        sb.append(data)
        ref += data
        kept = last(ref, capacity)
        assert sb.getvalue() == kept
        assert len(sb) == len(kept) <= capacity
        assert sb.end == len(ref)
        assert sb.start == len(ref) - len(kept)
        assert sum(len(c) for c in sb.tail()) == len(sb)
    for n in ns:
        assert joined(sb, n) == last(sb.getvalue(), n)


# --- size policy ---------------------------------------------------------------------------

CLIENTS = [ClientSize(24, 80, active=1), ClientSize(50, 60, active=3), ClientSize(30, 200, 2)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (SizePolicy.LATEST, (50, 60)),
        (SizePolicy.SMALLEST, (24, 60)),
        (SizePolicy.LARGEST, (50, 200)),
    ],
)
def test_choose_size(policy: SizePolicy, expected: tuple[int, int]) -> None:
    assert choose_size(policy, CLIENTS) == expected
    assert choose_size(policy, iter(CLIENTS)) == expected
    assert choose_size(policy, [ClientSize(7, 9, 0)]) == (7, 9)


@pytest.mark.parametrize("policy", list(SizePolicy))
def test_choose_size_with_no_clients(policy: SizePolicy) -> None:
    assert choose_size(policy, []) is None


def hub_with(
    policy: SizePolicy, *sizes: tuple[int, int], resumed: bool
) -> tuple[ClientHub, list[Subscriber]]:
    hub = ClientHub(policy)
    hub.hold(40, 120)  # as a restarted daemon found the terminal
    subs = [Subscriber(1024, read_only=False, label=f"c{n}") for n in range(len(sizes))]
    for sub, size in zip(subs, sizes, strict=True):
        hub.add(sub, size, resumed=resumed)
    return hub, subs


def test_a_held_size_stands_until_a_client_is_active() -> None:
    hub, (large, small) = hub_with(SizePolicy.LATEST, (40, 120), (24, 80), resumed=True)
    assert hub.wanted_size() == (40, 120), "the last one back does not win"
    assert hub.typed(large) and hub.wanted_size() == (40, 120)
    hub, (large, small) = hub_with(SizePolicy.LATEST, (40, 120), (24, 80), resumed=True)
    assert hub.typed(small) and hub.wanted_size() == (24, 80), "typing makes it latest"
    hub, (large, small) = hub_with(SizePolicy.LATEST, (40, 120), (24, 80), resumed=True)
    assert hub.resized(large, 30, 100) and hub.wanted_size() == (30, 100)
    hub, (large, small) = hub_with(SizePolicy.LATEST, (40, 120), (24, 80), resumed=True)
    hub.release()  # a resize request set the size directly
    assert hub.wanted_size() == (24, 80)
    hub, _ = hub_with(SizePolicy.LATEST, (24, 80), resumed=False)
    assert hub.wanted_size() == (24, 80), "a new attach ends the hold"


@pytest.mark.parametrize("policy", [SizePolicy.SMALLEST, SizePolicy.LARGEST])
def test_only_latest_holds_a_size(policy: SizePolicy) -> None:
    hub, _ = hub_with(policy, (50, 60), (30, 200), resumed=True)
    assert hub.wanted_size() == choose_size(policy, [ClientSize(50, 60, 1), ClientSize(30, 200, 2)])


def test_policy_names() -> None:
    assert [p.value for p in SizePolicy] == ["latest", "smallest", "largest"]
    assert SizePolicy("smallest") is SizePolicy.SMALLEST


@pytest.mark.parametrize(
    ("rows", "cols", "field"),
    [
        (0, 80, "rows"),
        (-1, 80, "rows"),
        (MAX_DIMENSION + 1, 80, "rows"),
        (24, 0, "cols"),
        (24, MAX_DIMENSION + 1, "cols"),
        (0, 0, "rows"),
    ],
)
def test_size_error_names_the_field(rows: int, cols: int, field: str) -> None:
    message = size_error(rows, cols)
    assert message is not None
    assert message.startswith(field + " ")
    bad = rows if field == "rows" else cols
    assert f"got {bad}" in message
    assert not valid_size(rows, cols)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (24, 80), (MAX_DIMENSION, MAX_DIMENSION)])
def test_valid_sizes(rows: int, cols: int) -> None:
    assert size_error(rows, cols) is None
    assert valid_size(rows, cols)


# --- detach keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ctrl-p,ctrl-q", b"\x10\x11"),
        (DEFAULT_DETACH_KEYS, b"\x10\x11"),
        ("ctrl-a", b"\x01"),
        ("ctrl-z", b"\x1a"),
        ("ctrl-@", b"\x00"),
        ("ctrl-[", b"\x1b"),
        ("ctrl-\\", b"\x1c"),
        ("ctrl-]", b"\x1d"),
        ("ctrl-^", b"\x1e"),
        ("ctrl-_", b"\x1f"),
        ("a", b"a"),
        ("a,b,c", b"abc"),
        ("ctrl-x,q", b"\x18q"),
        ("@", b"@"),
        ("", b""),
    ],
)
def test_parse_detach_keys(spec: str, expected: bytes) -> None:
    assert parse_detach_keys(spec) == expected


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("ctrl-", "ctrl-"),
        ("ctrl-1", "ctrl-1"),
        ("ctrl-pq", "ctrl-pq"),
        ("alt-p", "alt-p"),
        ("ctrl-p,", ""),
        (",ctrl-p", ""),
        ("ctrl-p,,ctrl-q", ""),
        ("ab", "ab"),
        ("é", "é"),
        ("ctrl-é", "ctrl-é"),
        ("ctrl-p,ctrl-!", "ctrl-!"),
    ],
)
def test_invalid_detach_keys_name_the_key(spec: str, bad: str) -> None:
    with pytest.raises(DetachKeysError) as excinfo:
        parse_detach_keys(spec)
    assert f"invalid detach key {bad!r}" in str(excinfo.value)


def test_describe() -> None:
    assert describe(parse_detach_keys("ctrl-p,ctrl-q")) == "ctrl-p ctrl-q"
    assert describe(parse_detach_keys("ctrl-@,ctrl-[,ctrl-_,x")) == "ctrl-@ ctrl-[ ctrl-_ x"


P, Q = b"\x10", b"\x11"
KEYS = P + Q


def test_exact_sequence_detaches_and_drops_what_follows() -> None:
    m = DetachMatcher(KEYS)
    assert m.feed(b"ls" + KEYS + b"rm -rf /", now=0.0) == (b"ls", True)
    assert m.deadline is None
    assert m.flush() == b""


def test_sequence_split_across_feeds() -> None:
    m = DetachMatcher(KEYS, wait=0.5)
    assert m.feed(b"echo" + P, now=10.0) == (b"echo", False)
    assert m.deadline == pytest.approx(10.5)
    assert m.feed(Q + b"after", now=10.2) == (b"", True)
    assert m.deadline is None
    assert m.flush() == b""


@pytest.mark.parametrize("follow", [b"a", P, b"\x03", b"xyz"])
def test_prefix_then_other_byte_passes_everything_in_order(follow: bytes) -> None:
    m = DetachMatcher(KEYS)
    out, detached = m.feed(P + follow, now=0.0)
    assert not detached
    held = m.flush()
    assert out + held == P + follow
    assert out.startswith(P)


def test_held_prefix_released_by_a_later_byte() -> None:
    m = DetachMatcher(KEYS, wait=0.5)
    assert m.feed(P, now=1.0) == (b"", False)
    assert m.deadline == pytest.approx(1.5)
    assert m.feed(b"k", now=1.2) == (P + b"k", False)
    assert m.deadline is None


def test_lone_prefix_is_held_until_flush() -> None:
    m = DetachMatcher(KEYS, wait=DEFAULT_WAIT)
    assert m.deadline is None
    assert m.feed(P, now=100.0) == (b"", False)
    assert m.deadline == pytest.approx(100.0 + DEFAULT_WAIT)
    assert m.flush() == P
    assert m.deadline is None
    assert m.flush() == b""
    # A fresh start after the flush: Q alone is not the sequence.
    assert m.feed(Q, now=101.0) == (Q, False)
    assert m.deadline is None


def test_deadline_is_not_extended_while_a_prefix_grows() -> None:
    m = DetachMatcher(b"abc", wait=1.0)
    m.feed(b"a", now=0.0)
    assert m.deadline == pytest.approx(1.0)
    m.feed(b"b", now=0.6)
    assert m.deadline == pytest.approx(1.0), "the held bytes must not wait longer than `wait`"
    assert m.flush() == b"ab"
    assert m.deadline is None


def test_no_keys_never_detaches() -> None:
    m = DetachMatcher(b"")
    assert m.feed(KEYS * 3, now=0.0) == (KEYS * 3, False)
    assert m.deadline is None


@pytest.mark.parametrize(
    ("keys", "data", "expected"),
    [
        (b"aab", b"aaab", (b"a", True)),
        (b"aab", b"aaaab", (b"aa", True)),
        (b"aab", b"aaba", (b"", True)),
        (b"abab", b"abababx", (b"", True)),
        (b"abac", b"ababac", (b"ab", True)),
        (b"aab", b"aa", (b"", False)),
        (b"aab", b"aaa", (b"a", False)),
    ],
)
def test_overlapping_prefixes(keys: bytes, data: bytes, expected: tuple[bytes, bool]) -> None:
    assert DetachMatcher(keys).feed(data, now=0.0) == expected
    # Byte by byte gives the same.
    m = DetachMatcher(keys)
    out = b""
    detached = False
    for i in range(len(data)):
        got, detached = m.feed(data[i : i + 1], now=float(i))
        out += got
        if detached:
            break
    assert (out, detached) == expected


@settings(max_examples=200, deadline=None)
@given(
    keys=st.binary(min_size=1, max_size=4).map(lambda b: bytes(x % 3 for x in b)),
    chunks=st.lists(
        st.binary(max_size=6).map(lambda b: bytes(x % 4 for x in b)), min_size=1, max_size=8
    ),
)
def test_matcher_property(keys: bytes, chunks: list[bytes]) -> None:
    m = DetachMatcher(keys, wait=0.5)
    forwarded = b""
    typed = b""
    detached = False
    for i, chunk in enumerate(chunks):
        out, detached = m.feed(chunk, now=float(i))
        forwarded += out
        typed += chunk
        if detached:
            break
        held = typed[len(forwarded) :]
        # Nothing is lost or reordered: what is not forwarded is held, and it is
        # a proper prefix of the keys; a deadline exactly when something is held.
        assert typed.startswith(forwarded)
        assert keys.startswith(held)
        assert held != keys
        assert (m.deadline is None) == (held == b"")
    if detached:
        # The detach happened at the first occurrence of the keys.
        assert typed.startswith(forwarded + keys)
        assert keys not in forwarded + keys[:-1]
        assert m.deadline is None
        assert m.flush() == b""
    else:
        assert forwarded + m.flush() == typed
        assert keys not in typed


# --- CRI log format ----------------------------------------------------------------------------

TS_RE = re.compile(rb"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z\Z")


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (0, b"1970-01-01T00:00:00.000000000Z"),
        (5, b"1970-01-01T00:00:00.000000005Z"),
        (1_700_000_000_123_456_789, b"2023-11-14T22:13:20.123456789Z"),
        (1_700_000_000_100_000_000, b"2023-11-14T22:13:20.100000000Z"),
        (951_782_400 * 10**9 + 999_999_999, b"2000-02-29T00:00:00.999999999Z"),
    ],
)
def test_timestamp_format(ns: int, expected: bytes) -> None:
    assert cri.timestamp(ns) == expected


def test_timestamp_now() -> None:
    before = time.time_ns()
    ts = cri.timestamp()
    after = time.time_ns()
    assert TS_RE.match(ts), ts
    secs = calendar.timegm(time.strptime(ts[:19].decode(), "%Y-%m-%dT%H:%M:%S"))
    assert before <= secs * 10**9 + int(ts[20:29]) <= after


TS = cri.timestamp(1_700_000_000_000_000_001)


def test_encode_full_and_partial_lines() -> None:
    ns = 1_700_000_000_000_000_001
    assert cri.encode(b"hello\nworld", ns) == (
        TS + b" stdout F hello\n" + TS + b" stdout P world\n"
    )
    assert cri.encode(b"one\n", ns) == TS + b" stdout F one\n"
    assert cri.encode(b"\n\n", ns) == TS + b" stdout F \n" + TS + b" stdout F \n"
    assert cri.encode(b"no newline", ns) == TS + b" stdout P no newline\n"
    assert cri.encode(b"", ns) == b""


def test_partial_records_join_into_one_line() -> None:
    decoder = cri.CriDecoder()
    stream = cri.encode(b"abc", 1) + cri.encode(b"def\nghi", 2) + cri.encode(b"\n", 3)
    assert stream.count(b" P ") == 2
    assert decoder.feed(stream) == b"abcdef\nghi\n"
    assert decoder.close() == b""


def test_decode_record() -> None:
    assert cri.decode_record(TS + b" stdout F a b  c") == (TS, b"stdout", b"F", b"a b  c")
    assert cri.decode_record(TS + b" stdout P ") == (TS, b"stdout", b"P", b"")
    assert cri.decode_record(TS + b" stderr F") == (TS, b"stderr", b"F", b"")


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        TS,
        TS + b" stdout",
        TS + b" stdout X content",
        TS + b" stdout f content",
        TS + b" stdout FP content",
        b"\x00\xff\xfe",
    ],
)
def test_decode_record_rejects_garbage(line: bytes) -> None:
    with pytest.raises(cri.CriFormatError, match="not a CRI log record"):
        cri.decode_record(line)


def test_decoder_rejects_garbage_lines_and_truncated_ends() -> None:
    with pytest.raises(cri.CriFormatError):
        cri.CriDecoder().feed(b"this is not a log\n")
    decoder = cri.CriDecoder()
    record = cri.encode(b"cut\n", 1)
    assert decoder.feed(record[:-1]) == b""
    with pytest.raises(cri.CriFormatError, match="truncated"):
        decoder.close()


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=40), max_size=10),
    ns=st.integers(min_value=0, max_value=2**62),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_cri_round_trip(chunks: list[bytes], ns: int, cuts: list[int]) -> None:
    stream = b"".join(cri.encode(c, ns + i) for i, c in enumerate(chunks))
    # Every record is well formed, one per line.
    for line in stream.split(b"\n")[:-1]:
        ts, stream_name, tag, _ = cri.decode_record(line)
        assert TS_RE.match(ts)
        assert stream_name == cri.STREAM
        assert tag in (b"F", b"P")
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = cri.CriDecoder()
    out = b"".join(decoder.feed(stream[a:b]) for a, b in itertools.pairwise(points))
    assert decoder.close() == b""
    assert out == b"".join(chunks)


# --- exec -u: users and groups as docker resolves them ----------------------------------------

PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/tmp:/bin/sh\n# a comment\nbad:x:x:y\n"
GROUP = "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app\nempty:x:60:\napp:x:2345:\n"


@pytest.mark.parametrize(
    ("spec", "user"),
    [
        ("app", ExecUser(1234, 2345, (2345, 10, 50))),  # primary, then each group it is in
        ("1234", ExecUser(1234, 2345, (2345, 10, 50))),  # the same user, by number
        ("app:staff", ExecUser(1234, 50, (50,))),  # a group given: that one only
        ("app:7", ExecUser(1234, 7, (7,))),
        ("root", ExecUser(0, 0, (0, 10))),
        ("4321", ExecUser(4321, 0, (0,))),  # unknown number: group 0, as docker
    ],
)
def test_exec_users_resolve_with_their_groups(spec: str, user: ExecUser) -> None:
    assert resolve(spec, PASSWD, GROUP) == user


def test_exec_users_without_files_or_names() -> None:
    assert resolve("5:6", None, None) == ExecUser(5, 6, (6,))
    assert resolve("app", PASSWD, None) == ExecUser(1234, 2345, (2345,))
    with pytest.raises(ContainerError, match="unable to find user nosuch"):
        resolve("nosuch", PASSWD, GROUP)
    with pytest.raises(ContainerError, match="unable to find group nogroup"):
        resolve("app:nogroup", PASSWD, GROUP)
    with pytest.raises(ContainerError, match="invalid user 'app:'"):
        resolve("app:", PASSWD, GROUP)


def test_a_runtimes_message_without_its_log_format() -> None:
    runc = (
        'time="2026-11-30T17:00:16Z" level=error msg="exec failed: unable to start container '
        'process: exec: \\"nosuchcmd\\": executable file not found in $PATH"\n'
    )
    assert runtime_message(runc) == (
        'exec failed: unable to start container process: exec: "nosuchcmd": '
        "executable file not found in $PATH"
    )
    crun = "2026-11-30T17:00:23.159704Z: executable file `x` not found in $PATH: No such file\n"
    assert runtime_message(crun) == "executable file `x` not found in $PATH: No such file"
    assert runtime_message("plain words\n\nand more\n") == "plain words; and more"
    assert runtime_message("") == ""


def test_the_collector_is_paused_for_an_adoption_and_only_then() -> None:
    assert gc.isenabled()
    with _collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), _collector_paused():
        raise RuntimeError("an adoption that fails")
    assert gc.isenabled(), "back on after a failure too"
    gc.disable()
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled(), "left off if it was off"
    finally:
        gc.enable()
