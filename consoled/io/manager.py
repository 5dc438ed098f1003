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
queued and sent by :meth:`run`.  A queued ``FDSTORE`` holds the owner of its
fd, not a duplicate: a manager that reads slowly while thousands of sessions
arrive must not double the daemon's open files (a duplicate per queued fd
once took a daemon with 3,400 sessions to its limit of 20,000).  An fd
closed before its turn is not stored at all.
"""

from __future__ import annotations

import array
import errno
import os
import socket
from collections import deque
from collections.abc import Mapping, MutableMapping
from typing import Final, Protocol

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
#: Seconds to wait before trying a full socket again, doubled after each failure...
RETRY_FIRST: Final = 0.001
#: ...up to this.
RETRY_MAX: Final = 0.05
#: Datagrams sent in a row before letting other tasks run.
BURST: Final = 64


class FdSource(Protocol):
    """What owns an fd to store: an :class:`OwnedFd`, a listener, a socket.

    ``fileno()`` raises, or returns -1, once the fd is closed.
    """

    def fileno(self) -> int: ...


def live_fd(source: FdSource) -> int | None:
    """The fd ``source`` still owns, or None once it is closed."""
    try:
        fd = source.fileno()
    except (trio.ClosedResourceError, OSError, ValueError):
        return None
    return fd if fd >= 0 else None


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
        self._pending: deque[tuple[bytes, FdSource | None]] = deque()
        self._queued = trio.Event()
        self.dropped = 0
        #: Queued FDSTOREs whose fd was closed before they could be sent.
        self.skipped = 0
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
        self._pending.clear()  # the fds are their owners' to close

    def notify(self, state: str) -> None:
        """Send ``KEY=VALUE`` lines (queued if the manager is busy)."""
        self._send(state.encode(), None)

    def store(self, name: str, source: FdSource) -> None:
        """Keep a duplicate of ``source``'s fd in the manager's fd store under ``name``.

        If it has to wait its turn, ``source`` is kept (not a duplicate of its
        fd), and the fd is stored only if it is still open then.
        """
        if not self.fd_store:
            return
        assert valid_fdname(name), name
        self._send(f"FDSTORE=1\nFDNAME={name}".encode(), source)

    def unstore(self, name: str) -> None:
        """Drop every fd stored under ``name``."""
        if self.fd_store:
            self._send(f"FDSTOREREMOVE=1\nFDNAME={name}".encode(), None)

    def pending_fd_store(self) -> list[tuple[str, str]]:
        """The fd store changes not sent yet, in order: ``("store"|"remove", name)``.

        A successor that takes over before they are sent makes them itself
        (see :meth:`replay_fd_store`); a store whose fd was closed meanwhile is
        left out.
        """
        changes = []
        for message, source in self._pending:
            op = {b"FDSTORE=1": "store", b"FDSTOREREMOVE=1": "remove"}.get(message.split(b"\n")[0])
            if op is None or (op == "store" and (source is None or live_fd(source) is None)):
                continue
            changes.append((op, message.rpartition(b"FDNAME=")[2].decode()))
        return changes

    def replay_fd_store(
        self, changes: object, sources: Mapping[str, FdSource]
    ) -> tuple[int, list[str]]:
        """Make a predecessor's unsent fd store changes, with our own fds of those names.

        Returns:
            How many were made, and the names that were not (no such fd here,
            or not a change at all: the list came from another program).
        """
        made = 0
        skipped: list[str] = []
        for change in changes if isinstance(changes, list) else []:
            op, name = change if isinstance(change, list | tuple) and len(change) == 2 else ("", "")
            if not isinstance(name, str) or not valid_fdname(name):
                skipped.append(repr(change)[:80])
            elif op == "store" and name in sources:
                self.store(name, sources[name])
                made += 1
            elif op == "remove":
                self.unstore(name)
                made += 1
            else:
                skipped.append(name)
        return made, skipped

    def _send(self, message: bytes, source: FdSource | None) -> None:
        if self._sock is None:
            return
        if not self._pending and self._try_send(message, source):
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((message, source))
        self._queued.set()

    def _try_send(self, message: bytes, source: FdSource | None) -> bool:
        """True if sent, moot (its fd closed) or hopeless (logged); False if it must wait."""
        assert self._sock is not None
        fd = None
        if source is not None:
            fd = live_fd(source)
            if fd is None:
                self.skipped += 1
                return True
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
            delay = RETRY_FIRST
            sent = 0
            while True:
                while not self._pending:
                    self._queued = trio.Event()
                    await self._queued.wait()
                message, source = self._pending[0]
                if self._try_send(message, source):
                    self._pending.popleft()
                    delay = RETRY_FIRST
                    sent += 1
                    if sent % BURST == 0:
                        await trio.lowlevel.checkpoint()
                    continue
                # The manager's queue is full (net.unix.max_dgram_qlen datagrams,
                # often 10).  An unconnected datagram socket's writability says
                # nothing about it: try again soon, less often while it stays full.
                # (A fixed 50 ms pause let 4,000 sessions' fds reach the store
                # at 200 a second, over minutes in which a crash lost them.)
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _watchdog(self, interval: float) -> None:
        # Pinging from the event loop proves the loop is turning: a daemon
        # blocked in a system call misses its pings and the manager restarts it.
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(interval / 3)
