"""Listening UNIX sockets and the one accept loop that serves all of them.

A :class:`Listener` owns a listening socket: one the daemon bound itself
(the socket file is removed when it is closed at shutdown), one adopted from
a predecessor (after a reexec, or from the service manager's fd store after a
crash: it was bound by a daemon, so it is still ours to remove), or one the
service manager created from a ``.socket`` unit (its file belongs to the
manager and is never removed).

:func:`serve_listener` is the only accept loop.  It never lets an accept
error take the daemon down: running out of fds or memory (EMFILE, ENFILE,
ENOMEM, ENOBUFS) leaves the connection queued in the backlog and backs off,
as trio's ``serve_listeners`` does; an error that concerns only the
connection being accepted is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Final

import structlog
import trio

from .fds import EXHAUSTED_ERRNOS

log = structlog.get_logger("consoled.listener")

#: Longest path that fits ``sockaddr_un.sun_path`` with its terminating NUL.
MAX_SOCKET_PATH: Final = 107
#: Seconds to wait before accepting again after running out of fds or memory.
ACCEPT_BACKOFF: Final = 0.1
# accept() errors that concern only the connection being accepted.
_ACCEPT_SKIP: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EPERM})


class Origin(Enum):
    """Who created a listening socket, which decides who removes its file."""

    BOUND = "bound"  # by this daemon or a predecessor: ours to remove
    MANAGER = "manager"  # by the service manager (a .socket unit): never removed


class Gate:
    """Whether accept loops may accept: closed while the daemon hands over.

    A closed gate leaves new connections queued in the listeners' backlogs,
    where the successor finds them.
    """

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    async def wait_open(self) -> None:
        await self._open.wait()


class FdReserve:
    """One file descriptor kept in reserve for the moment the process runs out.

    When accept() fails with EMFILE, the connection would wait in the backlog
    until some fd is freed, and its client would hang.  Giving up the
    reserve lets the daemon accept it and turn it away with a word instead.
    """

    def __init__(self) -> None:
        self._fd = self._open()

    @staticmethod
    def _open() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1  # taken again later

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def accept_spare(self, listener: Listener) -> socket.socket | None:
        """Accept one connection with the reserve's fd; the reserve is taken back after."""
        if self._fd < 0:
            self._fd = self._open()
            return None
        os.close(self._fd)
        self._fd = -1
        try:
            return listener.accept_now()
        except OSError:
            return None
        finally:
            self._fd = self._open()


class Listener:
    """Owns one listening UNIX stream socket.

    Args:
        sock: the listening socket (ownership passes to this object).
        name: what it is (``control``, ``console``, ``s12.sock``), for logs and handover.
        origin: see :class:`Origin`.
    """

    def __init__(self, sock: socket.socket, name: str, origin: Origin) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self.origin = origin
        address = sock.getsockname()
        self.path = Path(os.fsdecode(address)) if address else None
        try:
            self._ino: int | None = None if self.path is None else os.stat(self.path).st_ino
        except OSError:
            self._ino = None  # the file is gone already; nothing of ours to remove later

    def __repr__(self) -> str:
        return f"<Listener {self.name} {self.path} fd={self.sock.fileno()}>"

    @classmethod
    def bind(
        cls, path: Path, name: str, *, backlog: int, mode: int = 0o600, group: int | None = None
    ) -> Listener:
        """Create a listening socket at ``path``, replacing a stale file.

        Synchronous on purpose: when this returns, a peer can connect.  The
        file is created with ``mode`` (and ``group``) before anyone can connect.

        Raises:
            OSError: the path is too long, or binding failed.
        """
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise OSError(
                errno.ENAMETOOLONG, f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    path.unlink()
            old = os.umask(0o177)
            try:
                sock.bind(os.fspath(path))
            finally:
                os.umask(old)
            if group is not None:
                os.chown(path, -1, group)
            if mode != 0o600:
                os.chmod(path, mode)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return cls(sock, name, Origin.BOUND)

    @classmethod
    def adopt(cls, fd: int, name: str, origin: Origin) -> Listener:
        """Take over an inherited listening socket (ownership of ``fd`` passes here).

        Raises:
            ValueError: ``fd`` is not a listening UNIX stream socket (it is closed).
        """
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            os.close(fd)
            raise ValueError(f"fd {name!r} is not a socket: {exc.strerror}") from None
        try:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"fd {name!r} is not a UNIX stream socket")
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ValueError(f"fd {name!r} is not listening")
            os.set_inheritable(sock.fileno(), False)
            return cls(sock, name, origin)
        except BaseException:
            sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def present(self) -> bool:
        """True while the socket file at our path is still ours."""
        if self.path is None or self._ino is None:
            return False
        try:
            return os.stat(self.path).st_ino == self._ino
        except OSError:
            return False

    def gone(self) -> bool:
        """True when nothing at all is at our path any more (someone removed the file)."""
        if self.path is None:
            return False
        try:
            os.lstat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return False

    def take_over(self, other: Listener) -> None:
        """Listen on ``other``'s socket from now on (a socket bound again at a path
        whose file was removed); the old one is closed, and the accept loop goes
        on with the new one."""
        old = self.sock
        self.sock, self.path, self._ino = other.sock, other.path, other._ino
        other.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # it owns nothing now
        other.sock.close()
        trio.lowlevel.notify_closing(old)
        old.close()

    def accept_now(self) -> socket.socket | None:
        """The next queued connection (close-on-exec, blocking mode off), or None.

        Raises:
            OSError: accepting failed for a reason that is not the connection's own.
        """
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP:
                    continue  # that connection is gone; take the next
                raise
            conn.setblocking(False)
            return conn

    def close(self, *, unlink: bool = True) -> None:
        """Stop listening (idempotent).

        Args:
            unlink: remove the socket file too, if we created it and it is still
                ours; False when a successor keeps serving it.
        """
        if self.closed:
            return
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        if unlink and self.origin is Origin.BOUND and self.present():
            assert self.path is not None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


async def serve_listener(
    listener: Listener,
    handle: Callable[[socket.socket], None],
    *,
    gate: Gate | None = None,
    refuse: Callable[[socket.socket], None] | None = None,
    reserve: FdReserve | None = None,
    backoff: float = ACCEPT_BACKOFF,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listener`` until cancelled.

    Returns when the listener is closed.  Each connection goes to ``handle``
    at once, synchronously, before this task yields (the well-known console
    socket identifies its peer there, before a fast runtime can exit).
    ``handle`` owns the connection from then on; an exception from it is
    logged and costs only that connection.
    Cancelling this task, or closing ``gate``, leaves the listener open,
    with its backlog.

    Out of fds or memory, a connection stays queued and the loop backs off,
    unless ``reserve`` and ``refuse`` are given: then it is accepted with the
    reserve's fd and handed to ``refuse`` (which tells it why and closes it).
    """
    task_status.started()
    failing: str | None = None
    while True:
        try:
            await trio.lowlevel.wait_readable(listener.sock)
        except trio.ClosedResourceError:
            if listener.closed:
                return  # closed under us: its session ended
            continue  # a new socket took the old one's place (Listener.take_over)
        if gate is not None and not gate.is_open:
            await gate.wait_open()
            continue
        while True:
            try:
                conn = listener.accept_now()
            except OSError as exc:
                # Out of fds or memory: the connection stays queued; try again soon.
                # Anything else: log it and carry on the same way, never die.
                problem = exc.strerror or str(exc)
                if failing != problem:
                    level = log.warning if exc.errno in EXHAUSTED_ERRNOS else log.error
                    level("listener.accept_failed", listener=listener.name, error=problem)
                    failing = problem
                if exc.errno in EXHAUSTED_ERRNOS and reserve is not None and refuse is not None:
                    spare = reserve.accept_spare(listener)
                    if spare is not None:
                        refuse(spare)
                        continue
                await trio.sleep(backoff)
                break
            if failing is not None:
                log.info("listener.accepting_again", listener=listener.name)
                failing = None
            if conn is None:
                break
            try:
                handle(conn)
            except Exception as exc:
                conn.close()
                log.error("listener.internal_error", listener=listener.name, exc_info=exc)
