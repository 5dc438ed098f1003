"""The service manager's side of the daemon: sd_notify, the fd store, inherited fds.

systemd (or anything that speaks its protocol) sets ``$NOTIFY_SOCKET``; the
daemon says ``READY=1`` once it serves, ``RELOADING=1`` around a reexec,
``STOPPING=1``, ``STATUS=...`` and ``WATCHDOG=1``.  It also keeps every fd a
crash must not lose in the manager's *fd store* (``FDSTORE=1`` with an
``FDNAME``), and removes them again (``FDSTOREREMOVE=1``) when the session
goes.  After a restart the manager hands them back, with the sockets of a
``.socket`` unit, as ``$LISTEN_FDS`` from fd 3 on, named by
``$LISTEN_FDNAMES``.

Sending never blocks the daemon: a datagram the socket cannot take now is
queued (with a duplicate of any fd it carries) and sent by :meth:`run`.
"""

from __future__ import annotations

import array
import errno
import os
import socket
from collections import deque
from collections.abc import MutableMapping
from typing import Final

import structlog
import trio

from .fds import OwnedFd, set_cloexec

log = structlog.get_logger("consoled.manager")

#: The first inherited fd (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START: Final = 3
#: Longest fd name the manager accepts.
MAX_FDNAME: Final = 255
#: Datagrams queued while the manager is not reading; more are dropped.
MAX_PENDING: Final = 100_000


def valid_fdname(name: str) -> bool:
    return 0 < len(name) <= MAX_FDNAME and name.isascii() and name.isprintable() and ":" not in name


def take_listen_fds(env: MutableMapping[str, str]) -> list[tuple[str, OwnedFd]]:
    """The fds the service manager passed to this process, with their names.

    Follows sd_listen_fds_with_names(): only if ``$LISTEN_PID`` is our pid;
    the variables are removed from ``env`` so that no child inherits them,
    and every fd is made close-on-exec.
    """
    pid, count, names = env.get("LISTEN_PID"), env.get("LISTEN_FDS"), env.get("LISTEN_FDNAMES")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return []
    try:
        n = int(count)
    except ValueError:
        return []
    labels = names.split(":") if names else []
    taken = []
    for i in range(n):
        fd = LISTEN_FDS_START + i
        try:
            set_cloexec(fd)
        except OSError:
            continue  # not open after all
        taken.append((labels[i] if i < len(labels) else "unknown", OwnedFd(fd, "inherited")))
    return taken


class ServiceManager:
    """The notification socket of the service manager, if there is one.

    Args:
        env: the environment to read ``$NOTIFY_SOCKET`` and the watchdog from.
        fd_store: keep fds in the manager's fd store.
    """

    def __init__(self, env: MutableMapping[str, str], *, fd_store: bool = True) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if path:
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        self.fd_store = fd_store and self._sock is not None
        self._pending: deque[tuple[bytes, OwnedFd | None]] = deque()
        self._queued = trio.Event()
        self.dropped = 0
        usec, wpid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        self.watchdog: float | None = None
        if usec and usec.isdigit() and (not wpid or wpid == str(os.getpid())):
            self.watchdog = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        for _, owner in self._pending:
            if owner is not None:
                owner.close()
        self._pending.clear()

    def notify(self, state: str) -> None:
        """Send ``KEY=VALUE`` lines (queued if the manager is busy)."""
        self._send(state.encode(), None)

    def store(self, name: str, fd: int) -> None:
        """Keep a duplicate of ``fd`` in the manager's fd store under ``name``."""
        if not self.fd_store:
            return
        assert valid_fdname(name), name
        self._send(f"FDSTORE=1\nFDNAME={name}".encode(), fd)

    def unstore(self, name: str) -> None:
        """Drop every fd stored under ``name``."""
        if self.fd_store:
            self._send(f"FDSTOREREMOVE=1\nFDNAME={name}".encode(), None)

    def _send(self, message: bytes, fd: int | None) -> None:
        if self._sock is None:
            return
        if not self._pending and self._try_send(message, fd):
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        owner = None
        if fd is not None:
            try:
                owner = OwnedFd(os.dup(fd), "stored")
            except OSError as exc:
                log.warning("manager.store_failed", error=exc.strerror)
                return
        self._pending.append((message, owner))
        self._queued.set()

    def _try_send(self, message: bytes, fd: int | None) -> bool:
        """True if sent or hopeless (logged); False if it must wait."""
        assert self._sock is not None
        ancillary = (
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            if fd is not None
            else []
        )
        try:
            self._sock.sendmsg([message], ancillary, 0, self._address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.ENOMEM):
                return False
            self.dropped += 1
            log.warning("manager.notify_failed", error=exc.strerror, message=message[:40].decode())
        return True

    async def run(self) -> None:
        """Send what had to wait, and ping the watchdog; runs until cancelled."""
        if self._sock is None:
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            if self.watchdog:
                nursery.start_soon(self._watchdog, self.watchdog)
            while True:
                while not self._pending:
                    self._queued = trio.Event()
                    await self._queued.wait()
                message, owner = self._pending[0]
                if self._try_send(message, None if owner is None else owner.fd):
                    self._pending.popleft()
                    if owner is not None:
                        owner.close()
                    continue
                await trio.sleep(0.05)  # a datagram socket's writability says little here

    async def _watchdog(self, interval: float) -> None:
        # Pinging from the event loop proves the loop is turning: a daemon
        # blocked in a system call misses its pings and the manager restarts it.
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(interval / 3)
