"""Points in time as ``docker logs --since/--until`` take them.

Pure functions (no I/O).  A point in time is an integer of nanoseconds since
the Unix epoch, as the ``logs`` request carries it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

#: Go's duration units (time.ParseDuration), as docker takes them.
_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION: Final = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIX: Final = re.compile(r"(\d+)(?:\.(\d{1,9}))?")
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?)?"
    r"([Zz]|[+-]\d\d:?\d\d)?"
)


def parse_duration(text: str) -> int:
    """``1h30m``, ``10m``, ``1.5s``, ``250ms``: nanoseconds.

    Raises:
        ValueError: it is not a duration.
    """
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    total = 0
    for number, unit in _DURATION_PART.findall(text):
        whole, _, frac = number.partition(".")
        scale = _UNITS[unit]
        total += int(whole or 0) * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
    return total


def parse_time(text: str, now_ns: int) -> int:
    """A point in time given as docker's ``--since`` and ``--until`` take it.

    Args:
        text: RFC 3339 (``2026-11-29T10:00:00Z``, with up to nine fractional
            digits and a zone, or in local time without one; the date alone is
            its midnight), a Unix timestamp (``1764410400.5``), or a duration
            before ``now_ns`` (``10m``, ``1h30m``).
        now_ns: the present, in nanoseconds since the epoch.

    Returns:
        Nanoseconds since the epoch.

    Raises:
        ValueError: ``text`` is none of these; the message says what is accepted.
    """
    text = text.strip()
    if text != "0" and _DURATION.fullmatch(text):  # as docker: "0" is the epoch
        return now_ns - parse_duration(text)
    unix = _UNIX.fullmatch(text)
    if unix:
        frac = unix.group(2) or ""
        return int(unix.group(1)) * 1_000_000_000 + int(frac.ljust(9, "0") or 0)
    match = _RFC3339.fullmatch(text)
    if match:
        year, month, day, hour, minute, second, frac, zone = match.groups()
        try:
            when = datetime(
                int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                int(second or 0), tzinfo=_zone(zone),
            )  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"not a valid time: {text!r} ({exc})") from None
        if zone is None:
            when = when.astimezone()  # local time, as docker takes a time without a zone
        seconds = int(when.timestamp())
        return seconds * 1_000_000_000 + int((frac or "").ljust(9, "0") or 0)
    raise ValueError(
        f"not a time: {text!r}: use RFC 3339 (2026-11-29T10:00:00Z), a Unix timestamp, "
        "or a duration such as 10m or 1h30m"
    )


def _zone(zone: str | None) -> timezone | None:
    if zone is None:
        return None
    if zone in ("Z", "z"):
        return UTC
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
