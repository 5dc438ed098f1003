"""Split-safe scanning with ``re`` over a byte stream cut into arbitrary chunks.

Each scanner (modes, queries) has a *full* pattern, the sequences it acts on, and
a *partial* pattern anchored at the end of the buffer that matches every proper
prefix of a full match. After scanning a chunk, the leftmost partial match that
starts after the last full match is kept as the tail and scanned again with the
next chunk. Full patterns only ever contain an ESC as their first byte or as the
first byte of a final ST (``ESC \\``), so no match can start inside a held tail
and end before it, and scanning ``tail + chunk`` finds exactly the matches that
scanning the whole stream at once would find.
"""

from __future__ import annotations

import re
from typing import Final

#: C0 controls that a terminal executes in the middle of a CSI sequence without
#: ending it (everything but CAN, SUB and ESC, which cancel or restart it), and
#: DEL, which it ignores there. Patterns accept them among the parameters.
CSI_INERT: Final = rb"\x00-\x17\x19\x1c-\x1f\x7f"
_CSI_INERT_BYTES: Final = bytes([*range(0x18), 0x19, *range(0x1C, 0x20), 0x7F])


def strip_inert(params: bytes) -> bytes:
    """The parameter bytes of a CSI sequence without embedded C0 controls and DEL."""
    return params.translate(None, _CSI_INERT_BYTES)


def inert_controls(raw: bytes) -> bytes:
    """The C0 controls embedded in the CSI sequence ``raw`` that a terminal executes.

    Empty for other sequences: the BEL that ends an OSC string is part of it.
    """
    if not raw.startswith(b"\x1b["):
        return b""
    return bytes(b for b in raw if b < 0x20 and b not in (0x18, 0x1A, 0x1B))


def parse_params(params: bytes) -> list[int]:
    """CSI parameters as integers; an empty parameter is 0, a huge one is capped."""
    return [min(int(p), 65535) if p else 0 for p in strip_inert(params).split(b";")]


def scan_pattern(pattern: bytes) -> re.Pattern[bytes]:
    """``pattern`` without its capturing groups, to find candidates fast.

    sre pays for every group at every attempt, and there is an attempt at every
    ESC in the output: the scan runs about twice as fast without them. The
    rare matches are then parsed with the full pattern.
    """
    return re.compile(re.sub(rb"\(\?P<\w+>", b"(?:", pattern))


def hold_from(partial: re.Pattern[bytes], buf: bytes, start: int, limit: int) -> int:
    """Where the tail to keep starts: the leftmost possible unfinished sequence.

    Args:
        partial: a pattern ending in ``\\Z`` that matches every proper prefix of a
            sequence of interest.
        buf: the bytes scanned.
        start: the end of the last full match (nothing before it is held).
        limit: the longest tail worth holding (the longest partial match).

    Returns:
        ``len(buf)`` when nothing needs holding.
    """
    pos = max(start, len(buf) - limit)
    if buf.find(b"\x1b", pos) < 0:
        return len(buf)
    m = partial.search(buf, pos)
    return m.start() if m else len(buf)
