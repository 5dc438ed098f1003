"""The Kubernetes CRI container log format, as kubelet and conmon's k8s-file write it.

One record per line: ``<RFC3339Nano timestamp> <stream> <tag> <content>\\n``,
where the tag is ``F`` for a full line (its newline is implied) and ``P`` for
a partial one (the next record continues it).  Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime
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


_TIMESTAMP: Final = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)"
)


@functools.lru_cache(maxsize=64)
def _epoch_seconds(seconds: bytes, zone: bytes) -> int:
    when = datetime.strptime(seconds.decode() + zone.decode().replace("Z", "+00:00"),
                             "%Y-%m-%dT%H:%M:%S%z")  # fmt: skip
    return int(when.timestamp())


def parse_timestamp(ts: bytes) -> int:
    """A record's RFC 3339 timestamp as nanoseconds since the epoch.

    Raises:
        CriFormatError: it is not one.
    """
    match = _TIMESTAMP.fullmatch(ts)
    if match is None:
        raise CriFormatError(f"not an RFC 3339 timestamp: {ts[:40]!r}")
    seconds, frac, zone = match.groups()
    try:
        whole = _epoch_seconds(seconds, zone)
    except ValueError:
        raise CriFormatError(f"not a valid time: {ts[:40]!r}") from None
    return whole * 1_000_000_000 + int((frac or b"").ljust(9, b"0"))


class CriDecoder:
    """Turns a CRI log stream back into the bytes that were logged."""

    def __init__(self) -> None:
        self._pending = b""

    def _lines(self, data: bytes) -> list[bytes]:
        buf = self._pending + data
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        return lines

    @property
    def pending(self) -> int:
        """Bytes fed that are not yet a whole record (the next feed goes on from them)."""
        return len(self._pending)

    def feed(self, data: bytes) -> bytes:
        out = []
        for line in self._lines(data):
            _, _, tag, content = decode_record(line)
            out.append(content + b"\n" if tag == b"F" else content)
        return b"".join(out)

    def feed_records(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Each whole record in ``data``: its timestamp, and the bytes it logged."""
        out = []
        for line in self._lines(data):
            ts, _, tag, content = decode_record(line)
            out.append((ts, content + b"\n" if tag == b"F" else content))
        return out

    def close(self) -> bytes:
        """Check that the stream ended on a record boundary."""
        if self._pending:
            raise CriFormatError(f"truncated CRI record at end: {self._pending[:80]!r}")
        return b""
