"""I/O on one pty master: batched reads, serialised writes, window size.

One task reads (:meth:`PtyMaster.read_batch`); writers go through a FIFO lock
so that two clients' input never interleaves inside one write, and a writer
blocked on a container that does not read its terminal blocks neither the
reader nor any other session.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import trio

from .fds import OwnedFd, set_nonblocking

if TYPE_CHECKING:
    from . import _relay

#: One read() from a pty returns at most a few KiB; keep reading without
#: waiting until this much has been collected or the pty is empty.  Kept well
#: below a socket's send buffer (about 208 KiB): each client's pump gets one
#: turn per batch and sends at most a buffer's worth in it, so a larger batch
#: outruns even a client that reads as fast as it can (benchmarks: 256 KiB
#: batches got a full-speed reader dropped as lagged; docs/performance.md).
BATCH_SIZE: Final = 64 * 1024
READ_SIZE: Final = 64 * 1024
#: A first read shorter than this (an echo, a prompt) was most likely all there
#: was: the batch ends without another read that would fail.  If more was
#: there after all, the next wait returns at once.
SHORT_READ: Final = 512


class Hangup(Exception):
    """The slave side of the pty is closed for good (EIO/EOF on the master)."""


class PtyMaster:
    """Owns a pty master fd (through its :class:`~.fds.OwnedFd`)."""

    def __init__(self, holder: OwnedFd, number: int) -> None:
        self._holder = holder
        self.number = number
        set_nonblocking(holder.fd)
        self._write_lock = trio.StrictFIFOLock()
        #: The last read found the pty empty, or (a short first read) most
        #: likely: waiting is the next step, not reading.
        self.drained = False
        #: Set while a handover is under way: the reader reads nothing (see freeze).
        self._frozen: trio.Event | None = None
        #: The native relay's reader of this master, if it has one (see .relay).
        self.source: _relay.Source | None = None

    def relay_by(self, source: _relay.Source) -> None:
        """From now on the native relay reads the master (``source``), not read_batch.

        It reads unless frozen; it is closed before the master is (see
        :meth:`.relay.NativeRelay.source`).
        """
        self.source = source
        if self._frozen is None:
            source.resume()

    # --- a handover's pause ---------------------------------------------------------

    def freeze(self) -> None:
        """From now on the reader reads nothing until :meth:`thaw`; it waits instead.

        What the terminal writes meanwhile stays in the kernel's buffer, for
        whoever holds the master next.  Cheaper than cancelling the reader: a
        daemon handing over a thousand sessions spent 27 ms cancelling their
        readers while every attached client waited.
        """
        if self._frozen is None:
            self._frozen = trio.Event()
        if self.source is not None:
            self.source.pause()

    def thaw(self) -> None:
        """Let the reader go on (a handover failed)."""
        if self._frozen is not None:
            self._frozen.set()
            self._frozen = None
        if self.source is not None and not self.source.closed:
            self.source.resume()
            self.source.data()  # its pump looks again: the terminal may have hung up meanwhile

    async def wait_thawed(self) -> None:
        """Return at once, or once :meth:`thaw` is called."""
        while self._frozen is not None:
            await self._frozen.wait()

    @property
    def closed(self) -> bool:
        return self._holder.closed

    @property
    def fd(self) -> int:
        return self._holder.fd

    @property
    def owner(self) -> OwnedFd:
        """The fd's owner, for handing it on."""
        return self._holder

    def close(self) -> None:
        """Close the master: the container's terminal hangs up."""
        self._holder.close()

    def read_available(self) -> bytes | None:
        """Read what the pty holds now without waiting, up to :data:`BATCH_SIZE`.

        Returns:
            The bytes read, or None when nothing is available yet.

        Raises:
            Hangup: the slave side is gone and everything it wrote has been read.
        """
        fd = self._holder.fd
        parts: list[bytes] = []
        total = 0
        self.drained = False
        while total < BATCH_SIZE:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                self.drained = True
                break
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.ENXIO):
                    if parts:  # hand over what we have; the next call raises
                        break
                    raise Hangup from None
                raise
            if not data:
                if parts:
                    break
                raise Hangup
            parts.append(data)
            total += len(data)
            if total < SHORT_READ:
                self.drained = True
                break
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_batch(self) -> bytes:
        """Wait for output and return a batch of it.

        Raises:
            Hangup: see :meth:`read_available`.
            trio.ClosedResourceError: the master was closed under us.
        """
        if self.drained:  # the last read found the pty empty: wait before reading again
            await trio.lowlevel.wait_readable(self._holder.fd)
        while True:
            if self._frozen is not None:
                await self.wait_thawed()
            data = self.read_available()
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self._holder.fd)

    async def write(self, data: bytes, wrote: Callable[[int], None] | None = None) -> None:
        """Write all of ``data`` to the terminal, waiting while the container is not reading.

        Args:
            wrote: told the size of each part as it is written, so that what
                reached the terminal is known exactly however the write ends
                (cancelled while the terminal is full, say).

        Raises:
            Hangup: the slave side is gone.
            trio.ClosedResourceError: the master was closed meanwhile.
        """
        # Uncontended (the usual keystroke), take the lock without the
        # scheduler round trip of ``async with``: it costs a tenth of an echo.
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._write_lock.acquire()
        try:
            view = memoryview(data)
            while view:
                fd = self._holder.fd
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.ENXIO):
                        raise Hangup from None
                    raise
                view = view[n:]
                if wrote is not None:
                    wrote(n)
        finally:
            self._write_lock.release()

    def write_now(self, data: bytes) -> int:
        """Write what the terminal takes right now, without waiting.

        Returns:
            The number of bytes written: 0 while another write is in progress
            (it goes first) or the terminal is full.

        Raises:
            Hangup: the slave side is gone.
            trio.ClosedResourceError: the master was closed.
        """
        if self._write_lock.locked():
            return 0
        try:
            return os.write(self._holder.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.ENXIO):
                raise Hangup from None
            raise

    def get_size(self) -> tuple[int, int]:
        packed = fcntl.ioctl(self._holder.fd, termios.TIOCGWINSZ, b"\0" * 8)
        rows, cols, _, _ = struct.unpack("HHHH", packed)
        return rows, cols

    def set_size(self, rows: int, cols: int) -> None:
        """Set the window size; the kernel sends SIGWINCH if it changed."""
        fcntl.ioctl(self._holder.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def readable_now(fds: Iterable[int]) -> set[int]:
    """Which of ``fds`` have something to read, or hung up, right now (one poll(2))."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(0)}
