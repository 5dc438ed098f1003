"""Which window size a session gets when several clients are attached.

Pure logic, as tmux's ``window-size`` option: ``latest`` follows the client
that most recently attached, resized or typed; ``smallest`` and ``largest``
take the minimum or maximum of the rows and of the columns separately.
Read-only clients do not take part.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

MIN_DIMENSION = 1
MAX_DIMENSION = 65535


class SizePolicy(enum.StrEnum):
    LATEST = "latest"
    SMALLEST = "smallest"
    LARGEST = "largest"


@dataclass(frozen=True, slots=True)
class ClientSize:
    rows: int
    cols: int
    active: int  # a counter value: higher is more recent


def valid_size(rows: int, cols: int) -> bool:
    return MIN_DIMENSION <= rows <= MAX_DIMENSION and MIN_DIMENSION <= cols <= MAX_DIMENSION


def size_error(rows: int, cols: int) -> str | None:
    """A message naming what is wrong with a size, or None if it is valid."""
    for name, value in (("rows", rows), ("cols", cols)):
        if not MIN_DIMENSION <= value <= MAX_DIMENSION:
            return f"{name} must be between {MIN_DIMENSION} and {MAX_DIMENSION}, got {value}"
    return None


def choose_size(policy: SizePolicy, clients: Iterable[ClientSize]) -> tuple[int, int] | None:
    """The size to apply, or None when no client has a size (keep the current one)."""
    sizes = list(clients)
    if not sizes:
        return None
    if policy is SizePolicy.LATEST:
        latest = max(sizes, key=lambda c: c.active)
        return latest.rows, latest.cols
    pick = min if policy is SizePolicy.SMALLEST else max
    return pick(c.rows for c in sizes), pick(c.cols for c in sizes)
