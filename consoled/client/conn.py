"""A blocking control-socket client: stdlib sockets plus the sans-io protocol.

No trio here: every command-line client, ``attach`` included, starts by
importing only this, the protocol package and msgpack.
"""

from __future__ import annotations

import os
import socket
from typing import Final, TypeVar

from .. import __version__
from ..protocol import CLOSED, NEED_DATA, PROTOCOL_VERSION, Connection, ErrorCode, Role
from ..protocol import events as ev

RECEIVE_SIZE: Final = 256 * 1024
#: Seconds to wait for the daemon to answer a request.
REQUEST_TIMEOUT: Final = 30.0

E = TypeVar("E", bound=ev.Event)


class ClientError(Exception):
    """A request failed; ``code`` is the daemon's error code (or a local one)."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class DaemonUnavailable(ClientError):
    """The daemon is not running at the control socket, or it went away."""


class Client:
    """One connection to the daemon's control socket, handshake done.

    Args:
        path: the control socket.
        timeout: seconds to wait for each answer (None: forever).

    Raises:
        DaemonUnavailable: nothing answers at ``path``.
    """

    def __init__(self, path: str, *, timeout: float | None = REQUEST_TIMEOUT) -> None:
        self.path = path
        self.conn = Connection(Role.CLIENT)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise DaemonUnavailable(
                f"the daemon is not running: cannot connect to {path} ({exc.strerror})"
            ) from None
        try:
            welcome = self.request(ev.Hello(PROTOCOL_VERSION, f"consoled-cli/{__version__}"))
        except BaseException:
            self.sock.close()
            raise
        if not isinstance(welcome, ev.Welcome):  # pragma: no cover - the state machine checks
            raise ClientError(f"unexpected answer to hello: {welcome.TYPE}")
        self.daemon_pid = welcome.pid

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, event: ev.Event) -> None:
        try:
            self.sock.sendall(self.conn.send(event))
        except OSError as exc:
            raise DaemonUnavailable(f"lost the connection to consoled ({exc})") from None

    def receive(self) -> ev.Event | None:
        """The next event; None if the daemon closed the connection."""
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.receive_data()
                continue
            if event is CLOSED:
                return None
            assert isinstance(event, ev.Event)
            return event

    def receive_data(self) -> int:
        """Read once from the socket into the codec; returns the byte count (0 at EOF)."""
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except TimeoutError:
            raise DaemonUnavailable("consoled did not answer in time") from None
        except OSError as exc:
            raise DaemonUnavailable(f"lost the connection to consoled ({exc.strerror})") from None
        self.conn.receive_data(data)
        return len(data)

    def request(self, event: ev.Event) -> ev.Event:
        """Send a request and return its reply.

        Raises:
            ClientError: the daemon answered with an error.
            DaemonUnavailable: the daemon closed the connection.
        """
        self.send(event)
        return self.expect_reply()

    def expect_reply(self) -> ev.Event:
        reply = self.receive()
        if reply is None:
            raise DaemonUnavailable("consoled closed the connection")
        if isinstance(reply, ev.Error):
            raise ClientError(reply.message, reply.code)
        return reply

    def call(self, event: ev.Event, reply_type: type[E]) -> E:
        reply = self.request(event)
        if not isinstance(reply, reply_type):  # pragma: no cover - the state machine checks
            raise ClientError(f"unexpected answer {reply.TYPE!r} to {event.TYPE!r}")
        return reply

    def list_sessions(self, container: str | None = None) -> list[ev.SessionInfo]:
        page = self.call(ev.ListSessions(container), ev.SessionList)
        sessions = list(page.sessions)
        while page.more:
            page = self.expect_typed(ev.SessionList)
            sessions.extend(page.sessions)
        return sessions

    def expect_typed(self, reply_type: type[E]) -> E:
        reply = self.expect_reply()
        if not isinstance(reply, reply_type):  # pragma: no cover
            raise ClientError(f"unexpected message {reply.TYPE!r}")
        return reply


def control_socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, "control.sock")
