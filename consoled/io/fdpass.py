"""Passing fds over SCM_RIGHTS: a runtime's pty master in, and batches of fds
between a daemon and its successor.

Every fd the kernel hands us is owned by an :class:`~.fds.OwnedFd` from the
moment ``recvmsg`` returns: on any error, truncation or rejection, every fd
that arrived is closed.
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

from .fds import OwnedFd

#: ``_IOR('T', 0x30, unsigned int)``: the pty number; succeeds on a master only.
TIOCGPTN: Final = 0x80045430
#: How many fds we make room for in one message, so that a sender passing
#: several is seen (and all of them closed) rather than truncated.
MAX_FDS: Final = 16
#: Bytes of payload read with the fds (runc sends a path, crun one space).
PAYLOAD_SIZE: Final = 4096


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
    fds: list[OwnedFd]


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


def owners_from_ancdata(ancdata: list[tuple[int, int, bytes]], kind: str = "fd") -> list[OwnedFd]:
    """An owner for every fd in ``recvmsg`` ancillary data, in order."""
    owners: list[OwnedFd] = []
    for level, type_, data in ancdata:
        if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            owners.extend(OwnedFd(fd, kind) for fd in fds)
    return owners


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
    holders = owners_from_ancdata(ancdata)
    try:
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


async def receive_master(sock: trio.socket.SocketType) -> tuple[OwnedFd, int, bytes]:
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
        received.fds[0].kind = "pty"
    except BaseException:
        for holder in received.fds:
            holder.close()
        raise
    return received.fds[0], number, received.payload


# --- batches, for handing everything over to a successor ----------------------------------

#: The kernel's limit on fds in one SCM_RIGHTS message (``SCM_MAX_FD``).
SCM_MAX_FD: Final = 253
#: Fds sent per message in a batch transfer (below SCM_MAX_FD).
BATCH_FDS: Final = 250


async def send_with_fds(sock: trio.socket.SocketType, payload: bytes, fds: list[int]) -> None:
    """Send one message with up to :data:`SCM_MAX_FD` fds (duplicated into the receiver)."""
    if len(fds) > SCM_MAX_FD:
        raise ValueError(f"{len(fds)} fds exceed the {SCM_MAX_FD} one message can carry")
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    await sock.sendmsg([payload], ancillary)


async def receive_with_fds(
    sock: trio.socket.SocketType, max_payload: int, max_fds: int = SCM_MAX_FD
) -> tuple[bytes, list[OwnedFd]]:
    """Receive one message and the fds it carries (owned; closed if this raises).

    Raises:
        OSError: the control data was truncated (``EMSGSIZE``: more fds than
            ``max_fds``, or no fd slots left in this process).
    """
    ancsize = socket.CMSG_SPACE(max_fds * array.array("i").itemsize)
    msg, ancdata, flags, _ = await sock.recvmsg(max_payload, ancsize, socket.MSG_CMSG_CLOEXEC)
    owners = owners_from_ancdata(ancdata)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for owner in owners:
            owner.close()
        raise OSError(errno.EMSGSIZE, "a message or its fds were truncated")
    return msg, owners
