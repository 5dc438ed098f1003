"""When output arrived: a sparse index of (stream offset, wall-clock time) entries.

``logs --timestamps/--since/--until`` need the time of each *line*, which is
the time its first byte was read.  So an entry is added only for a batch in
which a line starts (its first byte follows a newline, or it holds a newline
before its last byte), and only if the newest entry is at least
:data:`RESOLUTION` older: a byte's time is that of the newest entry at or
before it, the start of the batch it came in, or, when batches are
coalesced, at most :data:`RESOLUTION` earlier.  Typing into a shell adds
nothing until Enter; a busy stream adds at most 100 entries a second.

Times never go back: an entry takes the newest entry's time if the wall
clock was set back, so lines stay in order and a range of times is a range
of offsets.

Entries are 16 bytes, little-endian ``(offset, nanoseconds since the epoch)``,
both signed 64-bit.  Stored entries are never trusted: :func:`decode` keeps
only entries whose offsets rise and whose times do not fall, so a torn or
stale write costs precision, never order.  Pure logic, no I/O.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Final

#: Entries closer together than this (nanoseconds) are coalesced.
RESOLUTION: Final = 10_000_000
ENTRY: Final = struct.Struct("<qq")


def starts_line(data: bytes, at_line_start: bool) -> bool:
    """Whether a line starts within ``data`` (``at_line_start``: the byte before was a newline)."""
    return bool(data) and (at_line_start or data.find(b"\n", 0, len(data) - 1) >= 0)


def entry_time(
    data: bytes,
    at_line_start: bool,
    newest: int | None,
    clock: Callable[[], int],
    *,
    first: bool = False,
) -> int | None:
    """The time of the entry a batch of output needs, or None if it needs none.

    Args:
        data: the batch.
        at_line_start: the byte before it was a newline.
        newest: the time of the newest entry (None: there is none).
        clock: the wall clock, in nanoseconds since the epoch (read only if needed).
        first: the batch starts something (a log file) and is dated whatever it holds.
    """
    if not data or not (first or starts_line(data, at_line_start)):
        return None
    now = clock()
    if newest is None:
        return now
    if not first and now - newest < RESOLUTION:
        return None
    return max(now, newest)  # never back in time, if the clock was set back


class TimeIndex:
    """Entries sorted by offset, in memory (two arrays, so a lookup is a bisection)."""

    def __init__(self) -> None:
        self.offsets = array("q")
        self.times = array("q")

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def last_time(self) -> int | None:
        return self.times[-1] if self.times else None

    def add(self, offset: int, when: int) -> bool:
        """Append an entry; False (and nothing added) if it would not sort."""
        if self.offsets and (offset <= self.offsets[-1] or when < self.times[-1]):
            return False
        self.offsets.append(offset)
        self.times.append(when)
        return True

    def time_at(self, offset: int) -> int | None:
        """The time of the byte at ``offset``: the newest entry at or before it (None: none)."""
        i = bisect_right(self.offsets, offset) - 1
        return self.times[i] if i >= 0 else None

    def thin(self, first: int, keep: int) -> None:
        """Make room: forget entries for bytes before ``first``, then coarsen the oldest.

        The entry that covers ``first`` is kept.  While more than ``keep``
        remain, every other entry of the older half goes (each pair keeps its
        earlier entry, so a line's time can only become earlier, never later).
        """
        drop = max(0, bisect_right(self.offsets, first) - 1)
        offsets, times = self.offsets[drop:], self.times[drop:]
        while len(offsets) > keep:
            half = len(offsets) // 2
            offsets = offsets[:half:2] + offsets[half:]
            times = times[:half:2] + times[half:]
        self.offsets, self.times = offsets, times

    def encode(self, start: int = 0) -> bytes:
        """Entries from the ``start``-th on, as stored."""
        out = bytearray()
        for offset, when in zip(self.offsets[start:], self.times[start:], strict=True):
            out += ENTRY.pack(offset, when)
        return bytes(out)


def decode(data: bytes, end: int | None = None) -> TimeIndex:
    """Stored entries, checked: offsets rising (and below ``end``), times not falling."""
    index = TimeIndex()
    for offset, when in ENTRY.iter_unpack(data[: len(data) - len(data) % ENTRY.size]):
        if offset < 0 or when <= 0 or (end is not None and offset >= end):
            continue
        if index.offsets and (offset <= index.offsets[-1] or when < index.times[-1]):
            continue
        index.offsets.append(offset)
        index.times.append(when)
    return index
