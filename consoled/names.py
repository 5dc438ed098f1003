"""Session names: ``ID`` (a container's init console) or ``ID/EXEC`` (an exec's).

Pure logic shared by the daemon and the client; imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Final

from .frozen import Frozen, frozen

#: One part of a session name (a container id or an exec name).
PART_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}"
_PART: Final = re.compile(PART_PATTERN)
#: Characters of an invalid name quoted in a message: the message goes back
#: in an ``error``, whose text may not pass 4,096 characters.
SHOWN: Final = 200


def shown(text: str) -> str:
    """``text`` quoted for a message, cut short when it is long."""
    if len(text) <= SHOWN:
        return repr(text)
    return f"{text[:SHOWN]!r}... ({len(text)} characters)"


_DIGITS: Final = re.compile(r"(\d+)")

#: A name split into numbers and text, for a natural order.
NaturalKey = tuple[tuple[int, int, str], ...]


def natural_key(text: str) -> NaturalKey:
    """Order names as people do: ``s2`` before ``s10``, runs of digits compared as numbers.

    A number is ``(0, value, digits)`` and sorts before text, ``(1, 0, text)``, as
    digits sort before letters; of two equal numbers the one written with more
    leading zeros comes first (``s01`` before ``s1``), so different names never tie.
    """
    key = []
    for i, piece in enumerate(_DIGITS.split(text)):
        if i % 2:
            key.append((0, int(piece), piece))
        elif piece:
            key.append((1, 0, piece))
    return tuple(key)


class InvalidName(ValueError):
    """A session name or part does not match the allowed syntax."""


def check_part(part: str, what: str = "name") -> str:
    """Return ``part`` unchanged if it is a valid container id or exec name."""
    if not _PART.fullmatch(part):
        raise InvalidName(
            f"invalid {what} {shown(part)}: it must start with a letter or digit, hold only "
            "letters, digits and '_.+-', and be at most 128 characters"
        )
    return part


@frozen
class SessionName(Frozen):
    """A parsed, valid session name."""

    id: str
    exec: str | None = None

    @classmethod
    def parse(cls, text: str, what: str = "container id") -> SessionName:
        """Parse ``ID`` or ``ID/EXEC``.

        Args:
            text: the name.
            what: what a name without '/' is called in a message (``rename``'s
                new name is a session name, not necessarily a container's).

        Raises:
            InvalidName: ``text`` is not a valid session name; the message says why.
        """
        if text.count("/") > 1:
            raise InvalidName(
                f"invalid session name {shown(text)}: use ID for a container's console "
                "or ID/EXEC for an exec's, with at most one '/'"
            )
        ident, sep, exec_name = text.partition("/")
        check_part(ident, "container id" if sep else what)
        if sep:
            check_part(exec_name, "exec name")
            return cls(ident, exec_name)
        return cls(ident)

    def sort_key(self) -> tuple[NaturalKey, bool, NaturalKey]:
        """Sort naturally by container, the init session before its execs (s2 before s10)."""
        return (natural_key(self.id), self.exec is not None, natural_key(self.exec or ""))

    def __lt__(self, other: SessionName) -> bool:
        return self.sort_key() < other.sort_key()

    def __str__(self) -> str:
        return self.id if self.exec is None else f"{self.id}/{self.exec}"

    @property
    def file_stem(self) -> str:
        """A flat file name for this session: ``ID`` or ``ID@EXEC``.

        '@' cannot occur in a name part, so different sessions never share a stem.
        """
        return self.id if self.exec is None else f"{self.id}@{self.exec}"
