"""A blocking control-socket client: stdlib sockets plus the sans-io protocol.

No trio here: every command-line client, ``attach`` included, starts by
importing only this, the protocol package and msgpack.

Before it sends anything, a client checks who is listening: a server that
runs as neither root, nor this user, nor ``$CONSOLED_DAEMON_USER`` may be an
impostor that replaced the socket, and is refused (:func:`check_server`).
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
import time
from collections.abc import Mapping
from typing import Final, TypeVar

from .. import __version__
from ..protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    ErrorCode,
    ProtocolError,
    Role,
)
from ..protocol import events as ev

RECEIVE_SIZE: Final = 256 * 1024
#: Seconds to wait for the daemon to answer a request.
REQUEST_TIMEOUT: Final = 30.0
#: Seconds a client waits for a restarting daemon (a reexec, or a crash under systemd).
RESTART_WAIT: Final = 10.0
#: connect() errors that a daemon coming back cures.
_NOT_YET: Final = frozenset({errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN})

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


class Restarting(DaemonUnavailable):
    """The daemon is handing over to its successor: the request was not started."""


class ConnectionLost(DaemonUnavailable):
    """The connection ended without a word from the daemon (it crashed, or was killed)."""


class UntrustedServer(ClientError):
    """The server on the socket runs as a user the client does not trust to be the daemon."""


def daemon_user(env: Mapping[str, str] = os.environ) -> int | None:
    """The uid ``$CONSOLED_DAEMON_USER`` names (a user name or a uid), None if unset.

    Raises:
        ClientError: it names no user.
    """
    named = env.get("CONSOLED_DAEMON_USER", "").strip()
    if not named:
        return None
    if named.isdigit():
        return int(named)
    try:
        return pwd.getpwnam(named).pw_uid
    except KeyError:
        raise ClientError(
            f"CONSOLED_DAEMON_USER={named} names no user: set it to the name or uid of the "
            "user the daemon runs as"
        ) from None


def check_server(sock: socket.socket, path: str, env: Mapping[str, str] = os.environ) -> None:
    """Refuse a server that runs as a user we do not trust to be the daemon.

    Whoever listens on the control socket sees everything typed into an
    attach.  If another user could replace the socket file (a state
    directory under a directory they can write), their server would get it.
    So before it says anything, the client checks who listens: the server
    must run as root, as this client's own user, or as the user named by
    ``$CONSOLED_DAEMON_USER`` (``SO_PEERCRED`` gives the credentials of the
    process that called ``listen()``, vouched for by the kernel).

    Raises:
        UntrustedServer: the server runs as someone else.
        ClientError: ``$CONSOLED_DAEMON_USER`` names no user.
    """
    _pid, uid, _gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    )
    named = daemon_user(env)
    euid = os.geteuid()
    if uid in (0, euid, named):
        return
    try:
        name = pwd.getpwuid(uid).pw_name
        who = f"uid {uid} ({name})"
    except KeyError:
        name, who = str(uid), f"uid {uid}"
    allowed = ["root"]
    if euid != 0:
        allowed.append(f"you (uid {euid})")
    if named is not None:
        allowed.append(f"CONSOLED_DAEMON_USER (uid {named})")
    trusted = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1 else allowed)
    raise UntrustedServer(
        f"refusing to talk to {path}: the server on it runs as {who}, not as {trusted}, "
        f"so it may be an impostor; if that user really runs the daemon, set "
        f"CONSOLED_DAEMON_USER={name}"
    )


class Client:
    """One connection to the daemon's control socket.

    The ``hello`` goes out with the first request, in the same write, and
    the ``welcome`` is read before its reply (the protocol allows one
    request to be pipelined so): every command saves a round trip.

    A daemon that is handing over to its successor answers ``restarting``
    instead of starting a request; the client then connects again (the
    successor serves the same socket) and sends it again, for up to
    :data:`RESTART_WAIT` seconds.

    Args:
        path: the control socket.
        timeout: seconds to wait for each answer (None: forever).
        wait: seconds to keep trying to connect while nothing listens at
            ``path`` (0: fail at once).

    Raises:
        DaemonUnavailable: nothing answers at ``path``.
    """

    def __init__(
        self, path: str, *, timeout: float | None = REQUEST_TIMEOUT, wait: float = 0.0
    ) -> None:
        self.path = path
        self.timeout = timeout
        #: The daemon's pid, from its ``welcome`` (0 until the first reply).
        self.daemon_pid = 0
        #: ``welcome``s read, one per connection the daemon accepted.
        self.welcomes = 0
        self._hello_due = False
        self._welcome_due = False
        self.reconnect(wait)

    def reconnect(self, wait: float = RESTART_WAIT) -> None:
        """Connect (again); the ``hello`` goes with the next request.

        Args:
            wait: seconds to keep trying while nothing listens at the path.
        """
        self._connect(wait_until=time.monotonic() + wait)

    def _connect(self, wait_until: float) -> None:
        delay = 0.02
        while True:
            self.conn = Connection(Role.CLIENT)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self.sock.settimeout(self.timeout)
            try:
                self.sock.connect(self.path)
                check_server(self.sock, self.path)
                break
            except ClientError:
                self.sock.close()
                raise
            except OSError as exc:
                self.sock.close()
                if exc.errno in _NOT_YET and time.monotonic() < wait_until:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise DaemonUnavailable(
                        f"permission denied: cannot connect to {self.path} (ask the daemon's "
                        "operator for --group or --watch-group)"
                    ) from None
                raise DaemonUnavailable(
                    f"the daemon is not running: cannot connect to {self.path} ({exc.strerror})"
                ) from None
        self._hello_due = True  # sent with the first request
        self._welcome_due = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, event: ev.Event) -> None:
        data = self.conn.send(event) if not self._hello_due else self._hello_and(event)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to consoled ({exc})") from None

    def _hello_and(self, event: ev.Event) -> bytes:
        """The ``hello`` and ``event`` pipelined, as one write."""
        hello = self.conn.send(ev.Hello(PROTOCOL_VERSION, f"consoled-cli/{__version__}"))
        data = hello + self.conn.send(event)
        self._hello_due = False
        self._welcome_due = True
        return data

    def receive(self) -> ev.Event | None:
        """The next event; None if the daemon closed the connection.

        The ``welcome`` to a pipelined ``hello`` is taken on the way; a daemon
        that refused the ``hello`` (a fatal ``error``) is returned that error.
        """
        if self._welcome_due:
            self._welcome_due = False
            welcome = self._next_event()
            if not isinstance(welcome, ev.Welcome):
                return welcome  # None, or the error that refused us
            self.daemon_pid = welcome.pid
            self.welcomes += 1
        return self._next_event()

    def _next_event(self) -> ev.Event | None:
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
            raise ConnectionLost(f"lost the connection to consoled ({exc.strerror})") from None
        self.conn.receive_data(data)
        return len(data)

    def request(self, event: ev.Event, *, again_if_lost: bool = False) -> ev.Event:
        """Send a request and return its reply (again to the successor of a restarting daemon).

        Args:
            again_if_lost: also send it again when the connection is lost
                without a word (a daemon that crashed, which its service
                manager starts again on the same socket), for as long as each
                new daemon answers ``hello``; only for a request that may be
                answered twice (``wait``, a stream's ``attach`` or ``logs``
                that got no ``attached``, ``list_sessions``, ``get_info``,
                ``resize``).

        Raises:
            ClientError: the daemon answered with an error.
            DaemonUnavailable: the daemon closed the connection.
        """
        deadline = time.monotonic() + RESTART_WAIT
        delay = 0.01
        while True:
            welcomes = self.welcomes
            try:
                return self._request_once(event)
            except ConnectionLost:
                if not again_if_lost:
                    raise
                if self.welcomes > welcomes:
                    # This daemon had taken the request: its successor gets
                    # the whole wait again.
                    deadline = time.monotonic() + RESTART_WAIT
                    delay = 0.01
                elif time.monotonic() >= deadline:
                    raise
            except Restarting:
                if time.monotonic() >= deadline:
                    raise
            self.sock.close()
            time.sleep(delay)  # the successor takes over within a few tens of ms
            delay = min(delay * 2, 0.2)
            self.reconnect()

    def _request_once(self, event: ev.Event) -> ev.Event:
        try:
            self.send(event)
        except DaemonUnavailable:
            # A daemon that turns a client away (restarting, permission_denied,
            # too_many_connections) says why and closes, maybe before our
            # request is sent: its words may be waiting to be read though the
            # send failed, and they, not the broken pipe, are the answer.
            try:
                self.expect_reply()
            except ClientError as exc:
                if exc.code is not None:
                    raise
            except ProtocolError:
                pass
            raise
        return self.expect_reply()

    def expect_reply(self) -> ev.Event:
        reply = self.receive()
        if reply is None:
            raise ConnectionLost("consoled closed the connection")
        if isinstance(reply, ev.Error):
            if reply.code is ErrorCode.RESTARTING:
                raise Restarting(reply.message, reply.code)
            if reply.code in (ErrorCode.PERMISSION_DENIED, ErrorCode.SHUTTING_DOWN):
                raise DaemonUnavailable(reply.message, reply.code)
            raise ClientError(reply.message, reply.code)
        return reply

    def call(self, event: ev.Event, reply_type: type[E], *, again_if_lost: bool = False) -> E:
        reply = self.request(event, again_if_lost=again_if_lost)
        if not isinstance(reply, reply_type):  # pragma: no cover - the state machine checks
            raise ClientError(f"unexpected answer {reply.TYPE!r} to {event.TYPE!r}")
        return reply

    def list_sessions(self, container: str | None = None) -> list[ev.SessionInfo]:
        page = self.call(ev.ListSessions(container), ev.SessionList, again_if_lost=True)
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
