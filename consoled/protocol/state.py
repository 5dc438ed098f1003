"""The connection state machine: everything that decides who may send what, when.

Both ends of a connection run the same machine, fed with every message sent
and received, so each knows what the other may legally do next.

::

    HANDSHAKE --hello--> HELLO_SENT --welcome--> IDLE
    HELLO_SENT --request--> HELLO_SENT (pipelined) --welcome--> AWAITING
    IDLE --request--> AWAITING --reply / non-fatal error--> IDLE
    AWAITING(attach|logs) --attached--> STREAMING --ended--> DONE
    any --fatal error--> DONE;  a peer's protocol violation --> ERROR

A client may send its first request right after ``hello``, without waiting
for ``welcome`` (one round trip fewer); the server answers it after the
``welcome``, as if it had come then.  Only one request may be pipelined so.
"""

from __future__ import annotations

import enum
from typing import NoReturn

from . import events as ev
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HANDSHAKE = "handshake"
    HELLO_SENT = "hello_sent"
    IDLE = "idle"
    AWAITING = "awaiting"
    STREAMING = "streaming"
    DONE = "done"
    ERROR = "error"


#: The reply that completes each request.
REPLY_FOR: dict[type[ev.Event], type[ev.Event]] = {
    ev.CreateSocket: ev.SocketCreated,
    ev.ListSessions: ev.SessionList,
    ev.GetInfo: ev.DaemonInfo,
    ev.Remove: ev.Removed,
    ev.Resize: ev.Resized,
    ev.Rename: ev.Renamed,
    ev.Attach: ev.Attached,
    ev.Logs: ev.Attached,
    ev.Reexec: ev.Reexeced,
    ev.Wait: ev.Waited,
    ev.ReportExit: ev.ExitReported,
}


#: What the server may send while streaming, besides ``ended``.
_SERVER_STREAM = (ev.Output, ev.Screen, ev.Error)


class StateMachine:
    """Tracks one connection; :meth:`process` raises on an illegal message."""

    __slots__ = ("pending", "state")

    def __init__(self) -> None:
        self.state = State.HANDSHAKE
        #: The request awaiting its reply.
        self.pending: type[ev.Event] | None = None

    def process(self, sender: Role, event: ev.Event, *, ours: bool) -> bool:
        """Advance on ``event`` sent by ``sender``.

        Args:
            sender: who sent the message.
            event: the message.
            ours: True when we are the sender (a violation is then local).

        Returns:
            False when the message is a harmless late arrival that the receiver
            should drop (stream input that crossed the server's ``ended``).

        Raises:
            LocalProtocolError, RemoteProtocolError: the message is not allowed now.
        """
        state = self.state
        if state is State.STREAMING:  # the hot path: a keystroke, a chunk of output
            kind = type(event)
            if kind is ev.Input and sender is Role.CLIENT:
                return True
            if kind is ev.Output and sender is Role.SERVER:
                return True
        if isinstance(event, ev.Error) and event.code.fatal and sender is Role.SERVER:
            self.state = State.DONE
            return True
        if sender is Role.CLIENT:
            if state is State.HANDSHAKE and isinstance(event, ev.Hello):
                self.state = State.HELLO_SENT
                return True
            if (
                state is State.HELLO_SENT
                and self.pending is None
                and isinstance(event, ev.CLIENT_REQUESTS)
            ):
                self.pending = type(event)  # pipelined: answered after the welcome
                return True
            if state is State.IDLE and isinstance(event, ev.CLIENT_REQUESTS):
                self.state = State.AWAITING
                self.pending = type(event)
                return True
            if state is State.STREAMING and isinstance(event, ev.STREAM_INPUTS):
                return True
            if state is State.DONE and isinstance(event, ev.STREAM_INPUTS):
                return False
        else:
            if state is State.HELLO_SENT and isinstance(event, ev.Welcome):
                self.state = State.IDLE if self.pending is None else State.AWAITING
                return True
            if state is State.AWAITING and self.pending is not None:
                if isinstance(event, ev.Error):
                    self.state = State.IDLE
                    self.pending = None
                    return True
                if type(event) is REPLY_FOR[self.pending]:
                    if isinstance(event, ev.SessionList) and event.more:
                        return True
                    self.state = State.STREAMING if isinstance(event, ev.Attached) else State.IDLE
                    self.pending = None
                    return True
            if state is State.STREAMING:
                if isinstance(event, _SERVER_STREAM):
                    return True
                if isinstance(event, ev.Ended):
                    self.state = State.DONE
                    return True
        self._violation(sender, event, ours=ours)

    def _violation(self, sender: Role, event: ev.Event, *, ours: bool) -> NoReturn:
        exc_type: type[ProtocolError] = LocalProtocolError if ours else RemoteProtocolError
        what = f"{sender.value} may not send {event.TYPE!r} in state {self.state.value}"
        if not ours:
            self.state = State.ERROR
        raise exc_type(what, ErrorCode.UNEXPECTED_MESSAGE)
