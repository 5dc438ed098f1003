"""Receiving a pty master over SCM_RIGHTS, and owning the fds that arrive.

Every fd the kernel hands us is owned by an :class:`FdHolder` from the moment
``recvmsg`` returns: on any error, truncation or rejection, every fd that
arrived is closed, and a closed holder forgets its number so that a reused fd
is never touched.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import stat
from dataclasses import dataclass
from typing import Final

import trio

#: ``_IOR('T', 0x30, unsigned int)``: the pty number; succeeds on a master only.
TIOCGPTN: Final = 0x80045430
#: How many fds we make room for in one message, so that a sender passing
#: several is seen (and all of them closed) rather than truncated.
MAX_FDS: Final = 16
#: Bytes of payload read with the fds (runc sends a path, crun one space).
PAYLOAD_SIZE: Final = 4096


class FdHolder:
    """Owns one file descriptor until it is closed or handed on."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise trio.ClosedResourceError("file descriptor already closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def release(self) -> int:
        """Give up ownership and return the fd; the caller now owns it."""
        fd = self.fd
        self._fd = -1
        return fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            # Wake any task waiting on this fd before the number can be reused.
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def __enter__(self) -> FdHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a leak is a bug, but never leak the fd itself
        if self._fd >= 0:
            os.close(self._fd)


class IntakeError(Exception):
    """A runtime connection did not deliver a usable pty master.

    Attributes:
        kind: a short stable word for logs and tests (``no_fd``, ``too_many_fds``...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class Received:
    payload: bytes
    fds: list[FdHolder]


def _describe_fd(fd: int) -> str:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        return f"unreadable fd ({exc.strerror})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return f"a character device ({os.major(st.st_rdev)}:{os.minor(st.st_rdev)})"
    return "an fd of unknown type"


def pty_number(fd: int) -> int | None:
    """The pty index if ``fd`` is a pty master, else None."""
    buf = array.array("I", [0])
    try:
        fcntl.ioctl(fd, TIOCGPTN, buf, True)
    except OSError:
        return None
    return buf[0]


def check_master(fd: int) -> int:
    """Make sure ``fd`` is a pty master and return its pty number.

    Raises:
        IntakeError: it is something else (a slave, a file, a socket...).
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise IntakeError("bad_fd", f"the fd cannot be inspected: {exc.strerror}") from None
    if stat.S_ISCHR(mode):
        number = pty_number(fd)
        if number is not None:
            return number
        if os.isatty(fd):
            raise IntakeError("pty_slave", "received a pty slave, not a master")
    raise IntakeError("not_a_pty", f"received {_describe_fd(fd)}, not a pty master")


async def receive_fds(sock: trio.socket.SocketType) -> Received:
    """Receive one message with its SCM_RIGHTS fds from a runtime.

    Every fd that arrives is owned by the returned holders; if this raises,
    they are already closed.

    Raises:
        IntakeError: the peer closed without sending, or the control data was
            truncated (``MSG_CTRUNC``) or malformed.
    """
    ancsize = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    msg, ancdata, flags, _ = await sock.recvmsg(PAYLOAD_SIZE, ancsize, socket.MSG_CMSG_CLOEXEC)
    holders: list[FdHolder] = []
    try:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                holders.extend(FdHolder(fd) for fd in fds)
        if flags & socket.MSG_CTRUNC:
            raise IntakeError(
                "truncated",
                f"control data was truncated (more than {MAX_FDS} fds?); "
                f"closed the {len(holders)} that arrived",
            )
        if not msg and not holders:
            raise IntakeError("closed_early", "the peer closed the connection without sending")
        if not holders:
            raise IntakeError(
                "no_fd", f"the peer sent {len(msg)} bytes of payload but no file descriptor"
            )
    except BaseException:
        for holder in holders:
            holder.close()
        raise
    return Received(msg, holders)


async def receive_master(sock: trio.socket.SocketType) -> tuple[FdHolder, int, bytes]:
    """Receive exactly one pty master; return its holder, pty number and payload.

    Raises:
        IntakeError: anything else arrived; every fd received is closed.
    """
    received = await receive_fds(sock)
    try:
        if len(received.fds) != 1:
            raise IntakeError(
                "too_many_fds",
                f"expected exactly one fd, received {len(received.fds)}; closed them all",
            )
        number = check_master(received.fds[0].fd)
    except BaseException:
        for holder in received.fds:
            holder.close()
        raise
    return received.fds[0], number, received.payload


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


def is_hangup_errno(exc: OSError) -> bool:
    """EIO on a master means the slave side is closed for good."""
    return exc.errno in (errno.EIO, errno.ENXIO)
