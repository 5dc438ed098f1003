"""The lines ``logs`` makes of a session's output: :class:`LineFilter` and :class:`TailFinder`.

Pure: the time of each line is given, and the tail is checked against
splitting the output into lines, for any chunking.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consoled.server.cri import timestamp
from consoled.server.loglines import UNKNOWN_TIME, LineFilter, TailFinder


def test_line_filter_keeps_the_range_and_stamps_lines() -> None:
    data = b"a\nbb\nccc\npartial"
    starts = {0: 10, 2: 20, 5: 30, 9: 40}
    lines = LineFilter(since=20, until=30, timestamps=True)
    out = lines.feed(data, lambda i: starts[i])
    assert out == b"%s bb\n%s ccc\n" % (timestamp(20), timestamp(30))
    assert lines.done  # a line after --until: nothing later can be kept
    unknown = LineFilter(until=15, timestamps=True).feed(b"x\ny\n", lambda i: None)
    assert unknown == UNKNOWN_TIME + b" x\n" + UNKNOWN_TIME + b" y\n"
    assert LineFilter(since=0).feed(b"x\n", lambda i: None) == b""


def test_a_line_keeps_its_first_bytes_time_across_feeds() -> None:
    lines = LineFilter(since=20)
    assert lines.feed(b"old li", lambda i: 10) == b""
    assert lines.feed(b"ne\nnew", lambda i: {3: 25}.get(i, 99)) == b"new"
    assert lines.feed(b" line\n", lambda i: 99) == b" line\n"


def tail_reference(data: bytes, n: int) -> int:
    """Where the last ``n`` lines of ``data`` start, by splitting it into lines."""
    if n == 0:
        return len(data)
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    return len(data) - sum(map(len, lines[-n:]))


@given(
    st.lists(st.sampled_from([b"a", b"\n", b"bc", b"\n\n", b"x\ny"]), max_size=30),
    st.integers(0, 12),
    st.integers(1, 7),
)
def test_tail_finder_matches_splitting_lines(parts: list[bytes], n: int, chunk: int) -> None:
    data = b"".join(parts)
    finder = TailFinder(n)
    found = 0
    for end in range(len(data), 0, -chunk):  # fed backwards in chunks
        start = max(0, end - chunk)
        at = finder.back(data[start:end])
        if at is not None:
            found = start + at
            break
    assert found == tail_reference(data, n)
