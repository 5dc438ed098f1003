"""journald's native protocol, without libsystemd.

Under systemd with ``StandardError=journal`` the daemon's stderr is a stream
to journald, which stores each line as one entry with nothing but MESSAGE.
Sending each event as a native entry instead keeps its fields searchable
(``journalctl EVENT=intake.rejected SESSION=web1``) and gives it a real
PRIORITY.  systemd sets ``$JOURNAL_STREAM`` to the device and inode of that
stream so a program can tell it is connected to the journal
(systemd.exec(5)); the entries go as datagrams to journald's socket
(systemd.journal-fields(7), and "Native Journal Protocol" in systemd's
documentation).
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import re
import select
import socket
import struct
from collections.abc import Mapping

#: Where journald listens for native entries.
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: SYSLOG_IDENTIFIER of every entry.
IDENTIFIER = "consoled"
#: syslog priorities of structlog's level names.
PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warn": 4,
    "warning": 4,
    "info": 6,
    "debug": 7,
}
#: How long a send waits for room in journald's queue before the entry is dropped.
SEND_WAIT = 0.2

# A name a client may send: upper-case letters, digits and underscores, not
# starting with a digit or an underscore (those are journald's own), at most
# 64 bytes.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Fields set from the event itself, never from one of its keys.
_RESERVED = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"})
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def stream_is_journal(fd: int, env: Mapping[str, str]) -> bool:
    """Whether ``fd`` is the journal stream ``$JOURNAL_STREAM`` (``DEV:INODE``) names."""
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return False


def field(name: str, value: bytes) -> bytes:
    """One field: ``NAME=value``, or the binary-safe form when the value has a newline."""
    if b"\n" in value:
        return b"%s\n%s%s\n" % (name.encode(), struct.pack("<Q", len(value)), value)
    return b"%s=%s\n" % (name.encode(), value)


def _encode(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace")
    if isinstance(value, bytes):
        return value
    return json.dumps(value, default=repr).encode("utf-8", "backslashreplace")


def entry(event: Mapping[str, object], message: str) -> bytes:
    """A native entry for a structlog event.

    Args:
        event: the event's fields (``event``, ``level``, ``timestamp``, ...):
            each becomes a field named in upper case, where that is a valid
            journal field name; strings as they are, other values as JSON.
        message: the rendered event, the entry's MESSAGE.
    """
    level = event.get("level")
    priority = PRIORITIES.get(level, 6) if isinstance(level, str) else 6
    parts = [
        field("MESSAGE", _encode(message)),
        field("PRIORITY", b"%d" % priority),
        field("SYSLOG_IDENTIFIER", IDENTIFIER.encode()),
    ]
    for key, value in event.items():
        name = key.upper() if isinstance(key, str) else ""
        if name not in _RESERVED and _FIELD_NAME.fullmatch(name):
            parts.append(field(name, _encode(value)))
    return b"".join(parts)


class JournalSocket:
    """A client socket to journald; used by one thread only.

    Args:
        path: journald's socket.
        wait: seconds a send waits for room in journald's queue.
    """

    def __init__(self, path: str = JOURNAL_SOCKET, *, wait: float = SEND_WAIT) -> None:
        self.path = path
        self.wait = wait
        self._sock: socket.socket | None = None
        self._congested = False
        self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        try:
            # Connected, so that poll() says when journald's queue has room.
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        return sock

    def send(self, data: bytes) -> None:
        """Send one entry (as built by :func:`entry`); never blocks for long.

        An entry too big for a datagram goes in a sealed memfd passed with
        SCM_RIGHTS, as ``sd_journal_send`` does; nothing is truncated.

        Raises:
            BlockingIOError: journald's queue stayed full (the entry is lost).
            OSError: the socket cannot be used (journald is gone).
        """
        sock = self._sock or self._connect()
        try:
            self._send_waiting(sock, data)
        except (ConnectionRefusedError, ConnectionResetError):
            # journald restarted: its socket is a new one at the same path.
            self.close()
            self._send_waiting(self._connect(), data)

    def _send_waiting(self, sock: socket.socket, data: bytes) -> None:
        try:
            self._send_once(sock, data)
        except BlockingIOError:
            # Wait a little for room, unless the last wait was in vain
            # (journald is stuck: do not make every entry wait).
            try:
                if self._congested or not self._writable(sock):
                    raise
                self._send_once(sock, data)
            except BlockingIOError:
                self._congested = True
                raise
        self._congested = False

    def _writable(self, sock: socket.socket) -> bool:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(self.wait * 1000))

    def _send_once(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            self._send_memfd(sock, data)

    @staticmethod
    def _send_memfd(sock: socket.socket, data: bytes) -> None:
        fd = os.memfd_create("consoled-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # journald takes a memfd from an unprivileged sender only sealed.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = array.array("i", [fd])
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
