"""The well-known console socket: one path every runtime can be pointed at.

No runtime sends the container's id with the master, so the daemon asks the
kernel who connected (SO_PEERCRED, pinned with SO_PEERPIDFD), reads that
process's command line and parses it as runc or crun would
(:mod:`consoled.runtimeargv`).  The identity is taken at accept time, before
the master is received, because a runtime may exit right after sending it.

A master is never dropped for want of a name: if the peer cannot be
identified it is held under ``unnamed-<n>`` with a warning saying why, and
``consoled rename`` fixes it.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import socket
import struct
from dataclasses import dataclass
from typing import Final

import structlog
import trio

from ..names import InvalidName, SessionName, check_part
from ..protocol.events import SessionState
from ..runtimeargv import ArgvError, RuntimeInvocation, parse_runtime_argv
from .config import DaemonConfig
from .errors import RequestError
from .fdpass import IntakeError, receive_master
from .intake import SEND_TIMEOUT, bind_listen, unlink_if_ours
from .registry import SessionTable, exec_base

log = structlog.get_logger("consoled.wellknown")

#: ``SO_PEERPIDFD`` (Linux 6.5): a pidfd for the peer as of connect().
SO_PEERPIDFD: Final = getattr(socket, "SO_PEERPIDFD", 77)
#: Longest /proc/PID/cmdline we read.
MAX_CMDLINE: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    argv: tuple[str, ...] | None
    problem: str | None  # why argv is unknown


def _peer_pidfd(sock: trio.socket.SocketType) -> int | None:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.ENODATA):
            return None  # an older kernel: fall back to the bare pid
        raise


def read_cmdline(pid: int) -> tuple[str, ...]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        data = f.read(MAX_CMDLINE)
    if not data:
        raise ProcessLookupError(pid)  # a zombie or kernel thread
    return tuple(os.fsdecode(arg) for arg in data.rstrip(b"\0").split(b"\0"))


def identify_peer(sock: trio.socket.SocketType) -> Peer:
    """Who is on the other end of ``sock``, and what was its command line."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if pid <= 0:
        return Peer(pid, uid, None, "the peer is in another pid namespace (SO_PEERCRED pid 0)")
    pidfd = _peer_pidfd(sock)
    try:
        try:
            argv = read_cmdline(pid)
        except (FileNotFoundError, ProcessLookupError):
            return Peer(pid, uid, None, f"process {pid} exited before it could be identified")
        except OSError as exc:
            return Peer(pid, uid, None, f"cannot read /proc/{pid}/cmdline: {exc.strerror}")
        if pidfd is not None:
            # If the peer is still alive, the pid cannot have been reused while
            # we read its command line.
            try:
                signal.pidfd_send_signal(pidfd, 0)
            except ProcessLookupError:
                return Peer(pid, uid, None, f"process {pid} exited before it could be identified")
        return Peer(pid, uid, argv, None)
    finally:
        if pidfd is not None:
            os.close(pidfd)


class WellKnownSocket:
    """Serves ``console.sock`` in the state directory."""

    def __init__(self, config: DaemonConfig, table: SessionTable) -> None:
        self.config = config
        self.table = table
        self._unnamed = itertools.count(1)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.config.console_socket
        sock = bind_listen(path, backlog=512)
        ino = os.stat(path).st_ino
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    conn, _ = await sock.accept()
                    nursery.start_soon(self._handle, conn)
        finally:
            sock.close()
            unlink_if_ours(path, ino)

    async def _handle(self, conn: trio.socket.SocketType) -> None:
        try:
            await self._intake(conn)
        except Exception as exc:
            # A bug in handling one connection must not take the listener down.
            log.error("intake.internal_error", exc_info=exc)

    async def _intake(self, conn: trio.socket.SocketType) -> None:
        with conn:
            peer = identify_peer(conn)
            with structlog.contextvars.bound_contextvars(peer_pid=peer.pid):
                try:
                    with trio.fail_after(SEND_TIMEOUT):
                        holder, number, _payload = await receive_master(conn)
                except trio.TooSlowError:
                    log.warning(
                        "intake.rejected",
                        kind="silent",
                        error=f"the peer connected but sent nothing within {SEND_TIMEOUT:g} s",
                    )
                    return
                except IntakeError as exc:
                    log.warning("intake.rejected", kind=exc.kind, error=str(exc))
                    return
                except OSError as exc:
                    log.warning("intake.rejected", kind="socket_error", error=exc.strerror)
                    return
                name, warning = self._name_for(peer)
                try:
                    session = self.table.adopt(name, (holder, number))
                except RequestError as exc:  # shutting down: adopt closed the master
                    log.warning("intake.rejected", kind="refused", error=exc.message)
                    return
                if warning:
                    log.warning("intake.named", session=str(session.name), why=warning)
                else:
                    log.info("intake.named", session=str(session.name))

    def _name_for(self, peer: Peer) -> tuple[SessionName, str | None]:
        """The session name for a master from ``peer``, and a warning if it is not exact."""
        if peer.argv is None:
            return self._unnamed_name(), f"cannot name the session: {peer.problem}"
        try:
            inv = parse_runtime_argv(peer.argv)
            check_part(inv.container_id, "container id")
        except (ArgvError, InvalidName) as exc:
            return self._unnamed_name(), f"cannot name the session from {peer.argv[:1]}: {exc}"
        if inv.command == "exec":
            base = exec_base(inv.process_args[0]) if inv.process_args else "exec"
            return self.table.free_exec_name(inv.container_id, base), None
        return self._container_name(inv)

    def _container_name(self, inv: RuntimeInvocation) -> tuple[SessionName, str | None]:
        name = SessionName(inv.container_id)
        existing = self.table.lookup(name)
        if existing is None:
            return name, None
        if existing.state is SessionState.EXITED:
            log.info("session.replaced", session=str(name), why="the container was started again")
            self.table.discard(existing)
            return name, None
        for n in itertools.count(2):
            candidate = SessionName(f"{inv.container_id[:120]}+{n}")
            if self.table.lookup(candidate) is None:
                return candidate, (
                    f"container {inv.container_id} already has a {existing.state} session; "
                    f"this master is held as {candidate}"
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _unnamed_name(self) -> SessionName:
        while True:
            name = SessionName(f"unnamed-{next(self._unnamed)}")
            if self.table.lookup(name) is None:
                return name
