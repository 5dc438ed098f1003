"""The receiving side of journald's native protocol, for the tests.

A test binds an ``AF_UNIX`` datagram socket where the daemon would find
``/run/systemd/journal/socket`` and parses what arrives as journald does:
``NAME=value`` lines, the binary-safe form (``NAME``, newline, a 64-bit
little-endian length, the value, newline), and entries too big for one
datagram as a sealed memfd passed with ``SCM_RIGHTS``.
"""

from __future__ import annotations

import array
import fcntl
import os
import re
import socket
import struct
from typing import NamedTuple

import trio

#: Receive buffer for one datagram: more than any datagram the kernel lets through.
MAX_DATAGRAM = 1 << 20
#: The seals journald wants on a memfd from an unprivileged sender.
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
#: journald's rule for a field name a client may send.
FIELD_NAME = re.compile(rb"[A-Z][A-Z0-9_]{0,63}")


class MalformedEntry(ValueError):
    pass


def parse_entry(data: bytes) -> dict[str, bytes]:
    """The fields of one entry; raises MalformedEntry for what journald would refuse."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            raise MalformedEntry(f"unterminated field at {pos}: {data[pos : pos + 80]!r}")
        line = data[pos:end]
        name, eq, value = line.partition(b"=")
        if eq:
            pos = end + 1
        else:  # binary-safe form
            if end + 9 > len(data):
                raise MalformedEntry(f"no length after field {name!r}")
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            value = data[start : start + size]
            if len(value) != size or data[start + size : start + size + 1] != b"\n":
                raise MalformedEntry(f"binary field {name!r} does not end where its length says")
            pos = start + size + 1
        if not FIELD_NAME.fullmatch(name):
            raise MalformedEntry(f"invalid field name {name!r}")
        if name.decode() in fields:
            raise MalformedEntry(f"field {name!r} sent twice")
        fields[name.decode()] = value
    return fields


class Received(NamedTuple):
    data: bytes
    #: Whether it came in a memfd (too big for a datagram).
    memfd: bool


async def receive_entry(sock: trio.socket.SocketType) -> Received:
    """The next entry: a datagram, or the contents of the sealed memfd it carried."""
    data, ancdata, flags, _ = await sock.recvmsg(
        MAX_DATAGRAM, socket.CMSG_SPACE(4 * array.array("i").itemsize)
    )
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    try:
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), flags
        if not fds:
            return Received(data, memfd=False)
        assert len(fds) == 1 and data == b"", (len(fds), data[:80])
        seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
        assert seals & REQUIRED_SEALS == REQUIRED_SEALS, f"memfd not sealed: {seals:#x}"
        return Received(os.pread(fds[0], os.fstat(fds[0]).st_size, 0), memfd=True)
    finally:
        for fd in fds:
            os.close(fd)
