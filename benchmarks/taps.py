"""Clients of a terminal: blocking *taps* used from worker threads and reader processes.

A tap reads the terminal's output and types into it, whatever stands
between: the master itself (raw), a consoled attach connection, or conmon's
attach socket (SOCK_SEQPACKET; each packet starts with one byte naming the
pipe).  Blocking on purpose: the measurement loops pay no event-loop cost.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import os
import select
import socket
import struct
import termios
from pathlib import Path

from consoled.client.conn import Client
from consoled.protocol import CLOSED, NEED_DATA, codec
from consoled.protocol import events as ev

#: Seconds a single blocking receive may wait before the measurement gives up.
RECV_TIMEOUT = 30.0
READ_SIZE = 256 * 1024


class Tap(abc.ABC):
    """One client's blocking view of a terminal."""

    @abc.abstractmethod
    def recv(self) -> bytes:
        """The next output bytes; ``b""`` once the stream ended.

        Raises:
            TimeoutError: nothing arrived within the tap's timeout.
        """

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Type ``data`` into the terminal."""

    def settimeout(self, timeout: float) -> None:  # noqa: B027 - optional
        pass

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def read_until(self, marker: bytes) -> bytes:
        """Read until ``marker`` has arrived; return what came after it."""
        buf = b""
        while marker not in buf:
            data = self.recv()
            if not data:
                raise EOFError(f"stream ended before {marker!r}; got {buf[-200:]!r}")
            buf += data
        return buf[buf.index(marker) + len(marker) :]


class RawTap(Tap):
    """The master itself (not owned)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.timeout = RECV_TIMEOUT

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def recv(self) -> bytes:
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise TimeoutError("no output from the pty")
        try:
            return os.read(self.fd, READ_SIZE)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                select.select([], [self.fd], [], self.timeout)


class ConsoledTap(Tap):
    """An attached protocol client (owns its connection)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ended: ev.Ended | None = None
        client.sock.settimeout(RECV_TIMEOUT)

    def settimeout(self, timeout: float) -> None:
        self.client.sock.settimeout(timeout)

    def recv(self) -> bytes:
        conn = self.client.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(self.client.sock.recv(READ_SIZE))
                continue
            if event is CLOSED:
                return b""
            if isinstance(event, ev.Output):
                return event.data
            if isinstance(event, ev.Ended):
                self.ended = event
                return b""

    def send(self, data: bytes) -> None:
        self.client.sock.sendall(self.client.conn.send(ev.Input(data)))

    def send_size(self, rows: int, cols: int) -> None:
        """The client's window changed (as ``consoled attach`` says on SIGWINCH)."""
        self.client.sock.sendall(self.client.conn.send(ev.WindowSize(rows, cols)))

    def close(self) -> None:
        self.client.close()


class FramedTap(ConsoledTap):
    """An attached client that handles stream data as a lean client would.

    Each key goes out as one ``input`` frame made by concatenation, and each
    ``output`` frame in the usual layout is recognised by its header and its
    data taken as it is; anything else (``ended``, ``error``, another
    layout) is decoded in full.  This is what a client in C or Go that
    speaks docs/protocol.md pays per keystroke, and about what conmon's raw
    tap pays: the echo then measures the daemon rather than the Python
    protocol library's state machine and codec (:class:`ConsoledTap`, which
    is what ``consoled attach`` pays, reported beside it).
    """

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._pending = b""

    def recv(self) -> bytes:
        if self.client.conn.buffered:  # read past `attached` by the library's client
            return super().recv()
        while True:
            pending = self._pending
            if len(pending) >= 4:
                end = 4 + int.from_bytes(pending[:4], "big")
                if len(pending) >= end:
                    body = pending[4:end]
                    self._pending = pending[end:]
                    found = _output_data(body)
                    if found is not None:
                        return found
                    event = codec.decode_body(body, 1 << 24, 1 << 16)
                    if isinstance(event, ev.Output):
                        return event.data
                    if isinstance(event, ev.Ended):
                        self.ended = event
                        return b""
                    continue
            data = self.client.sock.recv(READ_SIZE)
            if not data:
                return b""
            self._pending = pending + data if pending else data

    def send(self, data: bytes) -> None:
        body = b"".join((codec.INPUT_PREFIX, codec.bin_header(len(data)), data))
        self.client.sock.sendall(len(body).to_bytes(4, "big") + body)


def _output_data(body: bytes) -> bytes | None:
    """The data of an ``output`` body in the usual layout, else None."""
    found = codec.stream_data_at(body, 0, len(body))
    if found is None or found[0] is not ev.Output:
        return None
    return body[found[1] :]


class ConmonTap(Tap):
    """A connection to conmon's attach socket (owns it)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.connect(os.fspath(path))
        self.sock.settimeout(RECV_TIMEOUT)

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def recv(self) -> bytes:
        while True:
            packet = self.sock.recv(READ_SIZE)
            if not packet:
                return b""
            if len(packet) > 1:  # the first byte names the pipe (2: stdout)
                return packet[1:]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
