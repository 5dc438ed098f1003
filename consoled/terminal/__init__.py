"""A session's terminal: its screen, its modes, and the queries in its output.

Pure: bytes in, state and bytes out; no I/O, no event loop. The daemon keeps a
:class:`Screen` per session and answers the queries in the output with a
:class:`Responder`; the attach client writes output through an
:class:`OutputFilter` and, on detach, its reset sequence.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .filter import OutputFilter, reset_sequence
    from .modes import ModeTracker, TerminalModes
    from .queries import (
        DEFAULT_IDENTITY,
        Identity,
        Query,
        QueryKind,
        QueryScanner,
        Responder,
        answer,
    )
    from .screen import Cursor, Screen, join_render

#: Where each name lives: imported on first use, so that the attach client,
#: which needs only the filter, does not load the emulator (``python -X importtime``).
_HOMES = {
    "OutputFilter": "filter",
    "reset_sequence": "filter",
    "ModeTracker": "modes",
    "TerminalModes": "modes",
    "DEFAULT_IDENTITY": "queries",
    "Identity": "queries",
    "Query": "queries",
    "QueryKind": "queries",
    "QueryScanner": "queries",
    "Responder": "queries",
    "answer": "queries",
    "Cursor": "screen",
    "Screen": "screen",
    "join_render": "screen",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)


__all__ = [
    "DEFAULT_IDENTITY",
    "Cursor",
    "Identity",
    "ModeTracker",
    "OutputFilter",
    "Query",
    "QueryKind",
    "QueryScanner",
    "Responder",
    "Screen",
    "TerminalModes",
    "answer",
    "join_render",
    "reset_sequence",
]
