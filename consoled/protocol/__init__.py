"""The consoled control protocol, sans-io: no sockets, no trio.

Feed received bytes to :class:`Connection.receive_data`, take events from
:meth:`Connection.next_event`, and turn events into bytes with
:meth:`Connection.send`.  docs/protocol.md is the reference.
"""

from . import events
from .connection import (
    CLOSED,
    DEFAULT_MAX_FRAME_SIZE,
    MAX_DATA_CHUNK,
    NEED_DATA,
    Connection,
    EncodedOutput,
)
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import PROTOCOL_VERSION
from .state import Role, State

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_DATA_CHUNK",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Connection",
    "EncodedOutput",
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "State",
    "events",
]
