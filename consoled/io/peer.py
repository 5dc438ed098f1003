"""Who is on the other end of a UNIX socket: credentials, groups and command line.

The kernel vouches for these (``SO_PEERCRED`` and ``SO_PEERGROUPS`` are taken
at ``connect()``; ``SO_PEERPIDFD`` pins the process so that a reused pid is
noticed), so the daemon decides access from them, and names sessions on the
well-known console socket from the peer's command line.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import signal
import socket
import struct
from dataclasses import dataclass
from typing import Final

#: ``SO_PEERPIDFD`` (Linux 6.5): a pidfd for the peer as of connect().
SO_PEERPIDFD: Final = getattr(socket, "SO_PEERPIDFD", 77)
#: ``SO_PEERGROUPS`` (Linux 4.13): the peer's supplementary groups.
SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
#: Longest /proc/PID/cmdline we read.
MAX_CMDLINE: Final = 256 * 1024
#: Most supplementary groups a process can have (the kernel's ``NGROUPS_MAX``).
MAX_GROUPS: Final = 65536
#: The largest buffer Python's ``socket.getsockopt`` accepts.
_GETSOCKOPT_MAX: Final = 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    """A peer's identity as of its ``connect()``."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def in_group(self, gid: int) -> bool:
        return self.gid == gid or gid in self.groups


def credentials(sock: socket.socket, *, groups: bool = False) -> Credentials:
    """The peer's pid, uid and gid (and supplementary groups if asked).

    Raises:
        OSError: the kernel would not say (the caller must then grant nothing).
    """
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return Credentials(pid, uid, gid, peer_groups(sock) if groups else ())


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups as of its ``connect()`` (``SO_PEERGROUPS``).

    Python's ``getsockopt`` returns at most 1,024 bytes (256 groups); for a
    peer in more groups the kernel says ``ERANGE`` and they are read with a
    buffer for :data:`MAX_GROUPS`.  Only a kernel without ``SO_PEERGROUPS``
    (before 4.13) yields none: then the primary group alone counts.

    Raises:
        OSError: any other failure; the peer's groups are unknown.
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GETSOCKOPT_MAX)
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return ()
        if exc.errno != errno.ERANGE:
            raise
        raw = _getsockopt_large(sock.fileno(), SO_PEERGROUPS, 4 * MAX_GROUPS)
    values = array.array("I")
    values.frombytes(raw[: len(raw) - len(raw) % values.itemsize])
    return tuple(values)


def _getsockopt_large(fd: int, option: int, size: int) -> bytes:
    """``getsockopt(SOL_SOCKET, option)`` into a buffer larger than Python allows."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if libc.getsockopt(fd, socket.SOL_SOCKET, option, buf, ctypes.byref(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return buf.raw[: length.value]


def command_name(pid: int) -> str | None:
    """The peer's command name (``/proc/PID/comm``), for audit logs; None if gone."""
    if pid <= 0:
        return None
    try:
        # Three system calls; open() would make seven, on every connection.
        fd = os.open(f"/proc/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 64).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    argv: tuple[str, ...] | None
    problem: str | None  # why argv is unknown


def _peer_pidfd(sock: socket.socket) -> int | None:
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


def identify_peer(sock: socket.socket) -> Peer:
    """Who is on the other end of ``sock``, and what was its command line.

    Never raises: what cannot be known is said in :attr:`Peer.problem`.
    """
    try:
        creds = credentials(sock)
    except OSError as exc:
        return Peer(0, -1, None, f"cannot read the peer's credentials: {exc.strerror}")
    pid, uid = creds.pid, creds.uid
    if pid <= 0:
        return Peer(pid, uid, None, "the peer is in another pid namespace (SO_PEERCRED pid 0)")
    try:
        pidfd = _peer_pidfd(sock)
    except OSError:
        pidfd = None
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
            except PermissionError:
                pass  # alive, and not ours to signal (a daemon that is not root)
        return Peer(pid, uid, argv, None)
    finally:
        if pidfd is not None:
            os.close(pidfd)
