"""A session's scrollback: the newest output, bounded in bytes.

Pure data structure (no I/O).  Small writes are coalesced into chunks of up to
:data:`COALESCE` bytes so that a stream of one-byte echoes does not become a
million tiny objects; memory is allocated only as output arrives.
"""

from __future__ import annotations

from collections import deque
from typing import Final

#: Appends smaller than this are merged into the previous chunk.
COALESCE: Final = 4096


class Scrollback:
    """The last ``capacity`` bytes of a stream, with absolute offsets.

    Attributes:
        capacity: the most bytes retained.
        end: how many bytes were ever appended (the stream offset of the next byte).
    """

    __slots__ = ("_chunks", "_size", "capacity", "end")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.end = 0
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def __len__(self) -> int:
        """Bytes retained now."""
        return self._size

    @property
    def start(self) -> int:
        """Stream offset of the oldest retained byte."""
        return self.end - self._size

    def append(self, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        self.end += n
        cap = self.capacity
        if n >= cap:
            self._chunks.clear()
            self._size = 0
            if cap:
                self._chunks.append(data[n - cap :])
                self._size = cap
            return
        chunks = self._chunks
        if chunks and n < COALESCE and len(chunks[-1]) + n <= COALESCE:
            chunks[-1] += data
        else:
            chunks.append(data)
        self._size += n
        excess = self._size - cap
        while excess > 0:
            first = chunks[0]
            if len(first) <= excess:
                chunks.popleft()
                self._size -= len(first)
                excess -= len(first)
            else:
                chunks[0] = first[excess:]
                self._size -= excess
                excess = 0

    def tail(self, n: int | None = None) -> list[bytes]:
        """The last ``n`` retained bytes (all of them when ``n`` is None), as chunks."""
        if n is None or n >= self._size:
            return list(self._chunks)
        out: list[bytes] = []
        need = n
        for chunk in reversed(self._chunks):
            if need <= 0:
                break
            if len(chunk) <= need:
                out.append(chunk)
                need -= len(chunk)
            else:
                out.append(chunk[len(chunk) - need :])
                need = 0
        out.reverse()
        return out

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)
