"""The well-known console socket: one path every runtime can be pointed at.

No runtime sends the container's id with the master, so the daemon asks the
kernel who connected (SO_PEERCRED, pinned with SO_PEERPIDFD), reads that
process's command line and parses it as runc or crun would
(:mod:`consoled.runtimeargv`).  The identity is taken as the connection is
accepted, before the master is received, because a runtime may exit right
after sending it.  ``crun exec -d`` connects, sends and exits within about a
millisecond and is often gone even so; its exec is then placed by the process
on the terminal, which is already in the container (see
``WellKnownSocket._exec_name_from_terminal``).

A master is never dropped for want of a name: if the peer cannot be
identified it is held under ``unnamed-<n>`` with a warning saying why, and
``consoled rename`` fixes it.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from typing import Final

import structlog
import trio

from ..io.listener import Listener, serve_listener
from ..io.peer import Peer, identify_peer, read_cmdline
from ..io.process import terminal_leader
from ..names import InvalidName, SessionName, check_part
from ..protocol.events import SessionState
from ..runtimeargv import RUNTIME_OPTIONS, ArgvError, RuntimeInvocation, parse_runtime_argv
from .errors import RequestError
from .intake import receive_or_reject
from .registry import SessionTable, exec_base

log = structlog.get_logger("consoled.wellknown")

_UNNAMED: Final = re.compile(r"unnamed-[0-9]+")


def mount_namespace(pid: int | str) -> tuple[int, int] | None:
    """The identity of a process's mount namespace, or None if it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return st.st_dev, st.st_ino


class WellKnownSocket:
    """Serves ``console.sock`` in the state directory."""

    def __init__(self, listener: Listener, table: SessionTable) -> None:
        self.listener = listener
        self.table = table

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take masters on the well-known socket until cancelled (the listener stays open)."""
        async with trio.open_nursery() as nursery:

            def handle(conn: socket.socket) -> None:
                # Identified at once, before anything yields: every yield between
                # accept and reading /proc/PID/cmdline lets a fast runtime (``crun
                # exec -d`` exits about a millisecond after connecting) be gone first.
                peer = identify_peer(conn)
                nursery.start_soon(self._handle, trio.socket.from_stdlib_socket(conn), peer)

            await serve_listener(
                self.listener, handle, gate=self.table.gate, task_status=task_status
            )

    async def _handle(self, conn: trio.socket.SocketType, peer: Peer) -> None:
        try:
            await self._intake(conn, peer)
        except Exception as exc:
            # A bug in handling one connection must not take the listener down.
            log.error("intake.internal_error", exc_info=exc)

    async def _intake(self, conn: trio.socket.SocketType, peer: Peer) -> None:
        with conn, structlog.contextvars.bound_contextvars(peer_pid=peer.pid):
            received = await receive_or_reject(conn, self.table.in_flight, peer)
            if received is None:
                return
            owner, number, _payload = received
            name, warning, via = self._name_for(peer, owner.fd)
            try:
                session = self.table.adopt(name, owner, number)
            except RequestError as exc:  # shutting down: adopt closed the master
                log.warning("intake.rejected", kind="refused", error=exc.message)
                return
            if warning:
                log.warning("intake.named", session=str(session.name), why=warning)
            else:
                log.info("intake.named", session=str(session.name), via=via)

    def _name_for(self, peer: Peer, master_fd: int) -> tuple[SessionName, str | None, str | None]:
        """The session name for a master from ``peer``, a warning if it is not exact,
        and how the container was found (``cmdline`` or ``terminal``)."""
        if peer.argv is None:
            name = self._exec_name_from_terminal(master_fd)
            if name is not None:
                return name, None, "terminal"
            return self.table.unnamed_name(), f"cannot name the session: {peer.problem}", None
        try:
            inv = parse_runtime_argv(peer.argv)
            check_part(inv.container_id, "container id")
        except (ArgvError, InvalidName) as exc:
            why = f"cannot name the session from the command line of process {peer.pid}: {exc}"
            return self.table.unnamed_name(), why, None
        if inv.command == "exec":
            base = exec_base(inv.process_args[0]) if inv.process_args else "exec"
            return self.table.free_exec_name(inv.container_id, base), None, "cmdline"
        return (*self._container_name(inv), "cmdline")

    def _exec_name_from_terminal(self, master_fd: int) -> SessionName | None:
        """Name an exec whose runtime was gone before it could be identified.

        ``crun exec -d`` receives the master from the container, then connects, sends
        and exits within about a millisecond, often before the daemon can read its
        command line.  The process on the terminal is still there, though, already in
        the container: if its mount namespace is that of the process on a running
        session's terminal, and those sessions belong to one container, this is an
        exec in that container.  The base name is that process's command: the exec'd
        one, or the forked runtime's argv if it has not exec'd yet (which names it
        too), or whatever the command has exec'd since (``sh -c 'exec sleep 1d'``
        may be named ``sleep-N``).
        """
        leader = terminal_leader(master_fd)
        ns = None if leader is None else mount_namespace(leader)
        if leader is None or ns is None or ns == mount_namespace("self"):
            return None
        ids: set[str] = set()
        for session in self.table:
            master = session.master
            if master is None or master.closed:
                continue
            other = terminal_leader(master.fd)
            if other is not None and mount_namespace(other) == ns:
                ids.add(session.name.id)
        # unnamed-N is not a container: its exec would be named after a placeholder.
        ids = {i for i in ids if not _UNNAMED.fullmatch(i)}
        if len(ids) != 1:
            return None
        (container,) = ids
        try:
            argv: tuple[str, ...] = read_cmdline(leader)
        except OSError:
            argv = ()
        if argv and os.path.basename(argv[0]) in RUNTIME_OPTIONS:
            try:
                inv = parse_runtime_argv(argv)
            except ArgvError:
                argv = ()
            else:
                argv = inv.process_args if inv.container_id == container else ()
        return self.table.free_exec_name(container, exec_base(argv[0]) if argv else "exec")

    def _container_name(self, inv: RuntimeInvocation) -> tuple[SessionName, str | None]:
        name = SessionName(inv.container_id)
        existing = self.table.lookup(name)
        if existing is None or existing.state is SessionState.EXITED:
            # A new container under this id: a new generation of its sessions.
            self.table.new_generation(inv.container_id)
            return name, None
        for n in itertools.count(2):
            candidate = SessionName(f"{inv.container_id[:120]}+{n}")
            if self.table.lookup(candidate) is None:
                return candidate, (
                    f"container {inv.container_id} already has a {existing.state} session; "
                    f"this master is held as {candidate}"
                )
        raise AssertionError("unreachable")  # pragma: no cover
