"""Error codes and the two error families of the wire protocol.

``RemoteProtocolError`` means the peer sent something we cannot accept (the
connection goes to ERROR and is closed; the daemon carries on).
``LocalProtocolError`` means our own caller misused the API (a bug on our
side).  Both carry an :class:`ErrorCode` whose value is what goes on the wire
in an ``error`` message.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Every error code that can appear in an ``error`` message."""

    # Connection-level (fatal): the connection is closed after sending these.
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    BAD_MESSAGE = "bad_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    SHUTTING_DOWN = "shutting_down"
    RESTARTING = "restarting"  # the request was not started: reconnect and send it again
    PERMISSION_DENIED = "permission_denied"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    IDLE_TIMEOUT = "idle_timeout"
    BUFFER_LIMIT = "buffer_limit"
    OUT_OF_RESOURCES = "out_of_resources"
    # Request-level: the request failed, the connection stays usable.
    INVALID_NAME = "invalid_name"
    UNKNOWN_SESSION = "unknown_session"
    NAME_IN_USE = "name_in_use"
    SESSION_RUNNING = "session_running"
    SESSION_NOT_RUNNING = "session_not_running"
    INVALID_SIZE = "invalid_size"
    INVALID_ARGUMENT = "invalid_argument"
    READ_ONLY = "read_only"
    INPUT_DROPPED = "input_dropped"
    NOT_ALLOWED = "not_allowed"  # this client may only watch (--watch-group)
    LIMIT_EXCEEDED = "limit_exceeded"
    REEXEC_FAILED = "reexec_failed"
    INTERNAL = "internal"

    @property
    def fatal(self) -> bool:
        """True when the sender closes the connection after this error."""
        return self in _FATAL


_FATAL = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.BAD_MESSAGE,
        ErrorCode.UNEXPECTED_MESSAGE,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.RESTARTING,
        ErrorCode.PERMISSION_DENIED,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.BUFFER_LIMIT,
        ErrorCode.OUT_OF_RESOURCES,
    }
)


class ProtocolError(Exception):
    """Base of both protocol error families.

    Attributes:
        code: the wire error code describing the problem.
    """

    def __init__(self, msg: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> None:
        super().__init__(msg)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol (garbage bytes, a bad or unexpected message)."""


class LocalProtocolError(ProtocolError):
    """Our own code tried to send something the protocol does not allow now."""
