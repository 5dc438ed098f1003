"""The Kubernetes CRI container log format, as kubelet and conmon's k8s-file write it.

One record per line: ``<RFC3339Nano timestamp> <stream> <tag> <content>\\n``,
where the tag is ``F`` for a full line (its newline is implied) and ``P`` for
a partial one (the next record continues it).  Pure functions, no I/O.
"""

from __future__ import annotations

import time
from typing import Final

STREAM: Final = b"stdout"  # a terminal merges stdout and stderr


def timestamp(ns: int | None = None) -> bytes:
    """RFC 3339 with nanoseconds, in UTC: ``2026-11-28T17:40:00.123456789Z``."""
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % frac


def encode(data: bytes, ns: int | None = None) -> bytes:
    """The CRI records for one chunk of output, all with the same timestamp."""
    if not data:
        return b""
    prefix = timestamp(ns) + b" " + STREAM + b" "
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when data ends with a newline
    out = [prefix + b"F " + line + b"\n" for line in lines]
    if last:
        out.append(prefix + b"P " + last + b"\n")
    return b"".join(out)


class CriFormatError(ValueError):
    """A line is not a CRI log record."""


def decode_record(line: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Split one record (without its newline) into timestamp, stream, tag, content."""
    parts = line.split(b" ", 3)
    if len(parts) == 3 and parts[2] in (b"F", b"P"):
        parts.append(b"")  # an empty line: "TS stdout F" with no trailing space
    if len(parts) != 4 or parts[2] not in (b"F", b"P"):
        raise CriFormatError(f"not a CRI log record: {line[:80]!r}")
    ts, stream, tag, content = parts
    return ts, stream, tag, content


class CriDecoder:
    """Turns a CRI log stream back into the bytes that were logged."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        out = []
        for line in lines:
            _, _, tag, content = decode_record(line)
            out.append(content + b"\n" if tag == b"F" else content)
        return b"".join(out)

    def close(self) -> bytes:
        """Check that the stream ended on a record boundary."""
        if self._pending:
            raise CriFormatError(f"truncated CRI record at end: {self._pending[:80]!r}")
        return b""
