"""Errors that fail one request and go back to its client as an ``error`` message."""

from __future__ import annotations

from ..protocol.errors import ErrorCode


class RequestError(Exception):
    """A request cannot be done; the connection and the daemon carry on.

    Attributes:
        code: the wire error code.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])
