"""A session's terminal: its screen, its modes, and the queries in its output.

Pure: bytes in, state and bytes out; no I/O, no event loop. The daemon keeps a
:class:`Screen` per session and answers the queries in the output with a
:class:`Responder`; the attach client writes output through an
:class:`OutputFilter` and, on detach, its reset sequence.
"""

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
from .screen import Cursor, Screen

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
    "reset_sequence",
]
