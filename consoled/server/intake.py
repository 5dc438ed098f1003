"""Per-session console sockets: where a runtime hands over a session's pty master.

The socket takes connections until one delivers exactly one pty master; every
other delivery (nothing, several fds, a file, a socket, a slave, truncated
control data, silence) is closed and logged with a specific reason, and the
socket keeps waiting.  Once a master has arrived the socket file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Final

import structlog
import trio

from .fdpass import FdHolder, IntakeError, receive_master

log = structlog.get_logger("consoled.intake")

#: Seconds a connected runtime has to send its master.
SEND_TIMEOUT: Final = 10.0
#: How often we look whether someone removed the socket file.
PRESENCE_CHECK_INTERVAL: Final = 1.0
#: Longest path that fits ``sockaddr_un.sun_path`` with its terminating NUL.
MAX_SOCKET_PATH: Final = 107


class IntakeGone(Exception):
    """The session stopped waiting: its socket was removed or the timeout passed."""


def bind_listen(path: Path, backlog: int = 16) -> trio.socket.SocketType:
    """Create a listening UNIX socket at ``path`` with mode 0600, replacing a stale file.

    Synchronous on purpose: when this returns, a runtime can connect.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OSError(
            errno.ENAMETOOLONG, f"socket path is longer than {MAX_SOCKET_PATH} bytes: {path}"
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock)


async def receive_or_reject(conn: trio.socket.SocketType) -> tuple[FdHolder, int, bytes] | None:
    """Receive a runtime's master within :data:`SEND_TIMEOUT`.

    Returns:
        The master's holder, pty number and payload; or None after logging
        why the peer's intake was rejected (every fd it sent is closed).
    """
    try:
        with trio.fail_after(SEND_TIMEOUT):
            return await receive_master(conn)
    except trio.TooSlowError:
        log.warning(
            "intake.rejected",
            kind="silent",
            error=f"the peer connected but sent nothing within {SEND_TIMEOUT:g} s",
        )
    except IntakeError as exc:
        log.warning("intake.rejected", kind=exc.kind, error=str(exc))
    except OSError as exc:
        log.warning("intake.rejected", kind="socket_error", error=exc.strerror)
    return None


def unlink_if_ours(path: Path, ino: int) -> None:
    """Remove the socket file unless someone already replaced it."""
    try:
        if path.stat().st_ino == ino:
            path.unlink()
    except FileNotFoundError:
        pass


class ConsoleSocket:
    """The console socket of one waiting session, listening from construction on.

    Args:
        path: where to create it.
        timeout: seconds to wait for a master (0: forever).
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._sock = bind_listen(path)
        self._ino = path.stat().st_ino
        self._result: tuple[FdHolder, int] | None = None

    def close(self) -> None:
        """Stop listening and remove the socket file (idempotent)."""
        if self._sock.fileno() >= 0:
            self._sock.close()
            unlink_if_ours(self.path, self._ino)

    async def wait_master(self) -> tuple[FdHolder, int]:
        """Serve the socket until a valid master arrives; return it.

        Raises:
            IntakeGone: the socket file was removed or the timeout passed.
        """
        try:
            with trio.move_on_after(self.timeout or float("inf")) as timer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_presence, nursery.cancel_scope)
                    while True:
                        conn, _ = await self._sock.accept()
                        nursery.start_soon(self._handle, conn, nursery.cancel_scope)
            if self._result is not None:
                return self._result
            if timer.cancelled_caught:
                raise IntakeGone(f"no master arrived within {self.timeout:g} s")
            raise IntakeGone("its console socket file was removed")
        finally:
            self.close()

    async def _watch_presence(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(PRESENCE_CHECK_INTERVAL)
            try:
                present = self.path.stat().st_ino == self._ino
            except FileNotFoundError:
                present = False
            if not present:
                log.warning("intake.socket_removed", path=str(self.path))
                scope.cancel()
                return

    async def _handle(self, conn: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        with conn:
            try:
                received = await receive_or_reject(conn)
            except trio.Cancelled:
                if self._result is not None:
                    # The master came on another connection while this one was
                    # still open: it is closed, with any fds it had in flight.
                    log.warning(
                        "intake.rejected",
                        kind="second_connection",
                        error="a master arrived on another connection first; closed this one",
                    )
                raise
        if received is None:
            return
        holder, number, payload = received
        if self._result is not None:
            holder.close()
            log.warning(
                "intake.rejected",
                kind="second_master",
                error="a master already arrived for this session; closed the extra one",
            )
            return
        self._result = (holder, number)
        log.info("intake.master", pty=number, payload=payload[:64].decode("ascii", "replace"))
        scope.cancel()
