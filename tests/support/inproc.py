"""The daemon in the test's own process: fast tests of timeouts, limits and faults.

:func:`inproc_daemon` runs :func:`consoled.server.daemon.serve` in the
test's nursery, so a test can use trio's autojump clock (an idle timeout of
ten minutes passes at once) and reach the daemon's objects.  Masters come
from ``os.openpty()``, handed over a console socket exactly as a runtime
hands them (:func:`hand_master`); the test keeps the slave.  No process, no
container: these tests check the daemon's logic with real fds and sockets,
the integration tests check it with real runtimes.

On the way out the fixture checks that the daemon closed every fd it
opened: the process's fd table is as it was.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from consoled.server.config import DaemonConfig, Limits
from consoled.server.daemon import serve
from consoled.server.registry import SessionTable
from tests.support.client import AsyncClient


@dataclass
class InProcDaemon:
    config: DaemonConfig
    table: SessionTable
    cancel: trio.CancelScope
    clients: list[AsyncClient] = field(default_factory=list)

    async def connect(self, *, hello: bool = True) -> AsyncClient:
        """A client of this daemon, closed when the daemon's block ends."""
        client = await AsyncClient.connect(str(self.config.control_socket), hello=hello)
        self.clients.append(client)
        return client

    @property
    def control_socket(self) -> str:
        return str(self.config.control_socket)

    @property
    def console_socket(self) -> str:
        return str(self.config.console_socket)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@contextlib.asynccontextmanager
async def inproc_daemon(
    state_dir: Path, *, limits: Limits | None = None, **options: Any
) -> AsyncIterator[InProcDaemon]:
    """Serve ``state_dir`` in this process until the block ends.

    Args:
        state_dir: the daemon's state directory (short: socket paths).
        limits: the daemon's limits (defaults otherwise).
        options: other :class:`DaemonConfig` fields.
    """
    config = DaemonConfig(state_dir=state_dir, fd_store=False, **options)
    if limits is not None:
        config = replace(config, limits=limits)
    before = open_fds()
    async with trio.open_nursery() as nursery:
        table: SessionTable = await nursery.start(_serve, config)
        daemon = InProcDaemon(config, table, nursery.cancel_scope)
        try:
            yield daemon
        finally:
            for client in daemon.clients:
                await client.aclose()
            nursery.cancel_scope.cancel()
    # What the daemon opened is closed again (pty slaves are the test's own).
    left = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in open_fds() - before}
    leaked = {fd: what for fd, what in left.items() if not what.startswith("/dev/pts/")}
    assert not leaked, leaked


async def _serve(
    config: DaemonConfig, *, task_status: trio.TaskStatus[SessionTable] = trio.TASK_STATUS_IGNORED
) -> None:
    await serve(config, env={}, task_status=task_status)


def hand_master(path: str) -> tuple[int, int]:
    """Open a pty and hand its master to the console socket at ``path``, as runc does.

    Returns:
        (master, slave): the test's copy of the master is already closed
        (-1); the slave is the test's to write to and close.
    """
    master, slave = os.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            fds = array.array("i", [master])
            sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    except BaseException:
        os.close(slave)
        raise
    finally:
        os.close(master)
    return -1, slave
