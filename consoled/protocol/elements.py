"""Counting the elements of a msgpack body before it is decoded.

msgpack's own limits bound each container (1,024 items, 64 keys), not how
many a message holds: a 1 MiB body of nested empty arrays decodes into a
million lists (about 64 MB, and 100-300 ms of one core) before any field is
looked at.  :func:`count_elements` walks the body's headers instead, without
building anything, and stops as soon as the containers seen so far announce
more elements than allowed.  It never looks at more than ``limit`` elements,
so refusing a bomb costs microseconds.

An *element* is every msgpack object at any depth: each map and array, each
key, each value and each item.  ``{"type": "hello", "version": 1}`` holds 5.
"""

from __future__ import annotations

from typing import Final

from .errors import ErrorCode, RemoteProtocolError


def _steps() -> bytes:
    """For each first byte, the size of a scalar that starts with it; 0 for the rest."""
    step = bytearray(256)
    for b in range(0x80):  # positive fixint
        step[b] = 1
    for b in range(0xE0, 0x100):  # negative fixint
        step[b] = 1
    for b in range(0xA0, 0xC0):  # fixstr: the length is in the type byte
        step[b] = 1 + (b & 0x1F)
    fixed = {0xC0: 1, 0xC2: 1, 0xC3: 1}  # nil, false, true
    fixed |= {0xCA: 5, 0xCB: 9}  # float 32, 64
    fixed |= {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}  # ints
    fixed |= {0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18}  # fixext (refused later)
    for b, size in fixed.items():
        step[b] = size
    return bytes(step)


#: Scalars of a size known from their first byte.
_STEP: Final = _steps()
#: str, bin and ext with a length field: (bytes of length, bytes between it and the data).
_SIZED: Final = {
    0xC4: (1, 0),
    0xC5: (2, 0),
    0xC6: (4, 0),
    0xC7: (1, 1),
    0xC8: (2, 1),
    0xC9: (4, 1),
    0xD9: (1, 0),
    0xDA: (2, 0),
    0xDB: (4, 0),
}
#: array 16/32 and map 16/32: (bytes of count, elements per counted entry).
_CONTAINERS: Final = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def count_elements(body: bytes, limit: int) -> int:
    """The number of elements of the msgpack object at the start of ``body``.

    Only headers are read; nothing is decoded or checked beyond what counting
    needs.  A body that is not valid msgpack (cut short, an unused type byte)
    is counted as far as it goes: decoding it refuses it afterwards.

    Raises:
        RemoteProtocolError: (``bad_message``) the body holds more than
            ``limit`` elements; raised at the first container header that
            announces them, so at most ``limit`` elements are ever looked at.
    """
    budget = limit - 1  # the root
    pending = 1  # elements announced and not yet reached
    pos = 0
    end = len(body)
    step_of = _STEP
    while pending and pos < end:
        pending -= 1
        first = body[pos]
        step = step_of[first]
        if step:
            pos += step
            continue
        if first < 0xA0:  # fixmap 0x80-0x8f, fixarray 0x90-0x9f
            count = (first & 0x0F) * (2 if first < 0x90 else 1)
            pos += 1
        elif first in _CONTAINERS:
            size, per = _CONTAINERS[first]
            count = per * int.from_bytes(body[pos + 1 : pos + 1 + size], "big")
            pos += 1 + size
        elif first in _SIZED:
            size, gap = _SIZED[first]
            pos += 1 + size + gap + int.from_bytes(body[pos + 1 : pos + 1 + size], "big")
            continue
        else:  # 0xc1, which msgpack never uses
            break
        budget -= count
        if budget < 0:
            raise RemoteProtocolError(
                f"a message may hold at most {limit} elements (maps, arrays, keys, values "
                f"and items, at any depth); this one announces at least {limit - budget}",
                ErrorCode.BAD_MESSAGE,
            )
        pending += count
    return limit - budget
