"""A protocol connection over a trio stream: the sans-io codec plus real I/O.

Sends are serialised by a FIFO lock, because an attached client's output
pump and its input handler (answering a bad resize) may both send; the codec
is fed in the same order the bytes go out.

A session's reader may also write output straight to the socket while nobody
sends (:meth:`Channel.send_encoded_now`).  What the socket did not take of
that frame is the *unfinished* rest: every send finishes it first, so frames
never interleave.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

import trio

from ..io.fds import translate_oserror
from ..io.relay import INPUT_BUFFER
from ..protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    EncodedOutput,
    ErrorCode,
    RemoteProtocolError,
    Role,
    State,
)
from ..protocol import events as ev

if TYPE_CHECKING:
    from ..io import _relay


class InputRelay(Protocol):
    """Who lets the native relay's thread read a client's input (.streams.RelayedInput)."""

    #: Set when the thread has stopped reading (or was stopped).
    returned: trio.Event
    #: The thread reads (started, and not stopped since).
    active: bool

    def start(self) -> bool:
        """Let the thread read, if it may now; False (nothing changes) if not."""

    def stop(self) -> None:
        """Make the thread stop now, and take back what it read (idempotent)."""

    def take_size(self) -> None:
        """Record the window size the thread put in force, if it did since."""


RECEIVE_SIZE: Final = 64 * 1024
#: More frames than this in one send are joined first (writev takes at most 1,024).
MAX_WRITEV: Final = 64


class ByteBudget:
    """Bytes of unfinished frames held for all connections together, and their bound.

    A read is charged after the complete frames in it were taken out, so the
    bound can be passed by at most one read (RECEIVE_SIZE) at a time.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0

    def reserve(self, size: int) -> bool:
        """Count ``size`` bytes held outside any connection's buffer, if the
        bound has room for them (give them back with ``charge(size, 0)``)."""
        if self.total + size > self.limit:
            return False
        self.total += size
        return True

    def charge(self, before: int, after: int) -> None:
        """One connection's buffered bytes went from ``before`` to ``after``.

        Raises:
            RemoteProtocolError: the bound is exceeded (the connection is closed;
                its bytes are released by the caller with ``charge(after, 0)``).
        """
        self.total += after - before
        if after > before and self.total > self.limit:
            raise RemoteProtocolError(
                f"the daemon holds more than {self.limit} bytes of unfinished messages "
                "for all its clients; closing this connection",
                ErrorCode.BUFFER_LIMIT,
            )


class Channel:
    """One control connection, server side."""

    def __init__(self, stream: trio.abc.Stream, budget: ByteBudget | None = None) -> None:
        self.stream = stream
        self.conn = Connection(Role.SERVER)
        self._send_lock = trio.StrictFIFOLock()
        self._budget = budget
        self._charged = 0
        #: The rest of a frame that send_encoded_now (or the native relay's
        #: thread) could only partly write.
        self._unfinished: memoryview | None = None
        self._read_short = False
        #: The native relay's link to this client (see :mod:`..io.relay`), and
        #: whether its thread may write output to the socket now: only while
        #: nobody here sends (every send deactivates it first).
        self.link: _relay.Link | None = None
        self._link_active = False
        #: Lets the native relay's thread read the client's input while it
        #: may (see .streams.RelayedInput); what it hands back comes first.
        self.relayed_input: InputRelay | None = None
        #: Bytes of the budget the relay's thread holds for this client's input.
        self._reserved = 0

    def release(self) -> None:
        """Give back this connection's share of the budget, and its link (it is closing)."""
        if self._budget is not None:
            self._budget.charge(self._charged, 0)
        self._charged = 0
        self.release_input_buffer()
        if self.link is not None:
            self._link_active = False
            self.link.close()

    def activate_link(self) -> bool:
        """Let the relay's thread write output to the client from now on, if
        nothing here is being sent or unfinished (see :meth:`.Link.activate`)."""
        link = self.link
        if (
            link is None
            or self._link_active
            or self._send_lock.locked()
            or self._unfinished is not None
            or self.conn.state is not State.STREAMING
        ):
            return self._link_active
        self._link_active = link.activate()
        return self._link_active

    def reserve_input_buffer(self) -> bool:
        """Charge the relay thread's input buffer to the budget, for as long as
        the thread reads this client (False: no room; the event loop reads it)."""
        if self._reserved:
            return True
        if self._budget is not None and not self._budget.reserve(INPUT_BUFFER):
            return False
        self._reserved = INPUT_BUFFER
        return True

    def release_input_buffer(self) -> None:
        """The thread no longer reads this client: its buffer leaves the budget."""
        if self._reserved and self._budget is not None:
            self._budget.charge(self._reserved, 0)
        self._reserved = 0

    @property
    def link_stopped(self) -> bool:
        """The relay's thread deactivated the link itself (a socket that took part of a frame)."""
        return self._link_active and self.link is not None and not self.link.active

    def hand_back(self, left: bytes) -> None:
        """What the relay's thread read from the client and did not use: the
        start of its next messages, read here next."""
        if left:
            self.conn.receive_data(left)

    def deactivate_link(self) -> None:
        """The relay's thread writes nothing more; the rest of a frame it could
        not finish is written before anything else."""
        if self._link_active:
            assert self.link is not None
            self._link_active = False
            rest = self.link.deactivate()
            if rest:
                assert self._unfinished is None
                self._unfinished = memoryview(rest)

    @property
    def unfinished(self) -> bool:
        """Part of a frame is written and the rest waits for the next send (or :meth:`flush`)."""
        return self._unfinished is not None

    async def send(self, *events: ev.Event) -> None:
        """Send events in order.

        Raises:
            trio.BrokenResourceError: the client went away.
            trio.ClosedResourceError: the client broke the protocol (the
                connection is closing: only the fatal error may still go out).
        """
        await self._acquire()
        try:
            # An attached client's input loop may have just received garbage
            # while its output pump was about to send: the pump stops here.
            if self.conn.state is State.ERROR and not all(
                isinstance(e, ev.Error) and e.code.fatal for e in events
            ):
                raise trio.ClosedResourceError("the client broke the protocol")
            await self._finish()
            await self._write([b"".join([self.conn.send(event) for event in events])])
        finally:
            self._send_lock.release()

    async def send_output(self, outputs: Sequence[EncodedOutput]) -> None:
        """Send output framed beforehand (shared by every client of a session), in order.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`send`.
        """
        await self._acquire()
        try:
            if self.conn.state is State.ERROR:
                raise trio.ClosedResourceError("the client broke the protocol")
            await self._finish()
            await self._write([self.conn.send_encoded(output) for output in outputs])
        finally:
            self._send_lock.release()

    async def flush(self) -> None:
        """Finish the frame :meth:`send_encoded_now` started, if any.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: as :meth:`send`.
        """
        await self._acquire()
        try:
            await self._finish()
        finally:
            self._send_lock.release()

    def send_encoded_now(self, output: EncodedOutput) -> bool:
        """Write ``output`` to the socket now, if nobody is sending; never waits.

        If the socket takes only part of it, the rest is written by the next
        send (or :meth:`flush`) before anything else: see :attr:`unfinished`.

        Returns:
            False if nothing was written: someone is sending, a frame is
            unfinished, the stream is not open, or the socket is full or broken
            (the caller queues it; the next send reports a broken socket).
        """
        if (
            self._send_lock.locked()
            or self._unfinished is not None
            or self._link_active
            or self.conn.state is not State.STREAMING
        ):
            return False
        frames = self.conn.send_encoded(output)
        try:
            sent = self._send_now([frames])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not sent:
            return False
        if sent < len(frames):
            self._unfinished = memoryview(frames)[sent:]
        return True

    async def _acquire(self) -> None:
        # Uncontended (the usual case), take the lock without the scheduler
        # round trip of ``async with``.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        self.deactivate_link()

    async def _finish(self) -> None:
        """With the lock held: write the rest of an unfinished frame."""
        rest = self._unfinished
        if rest is not None:
            try:
                await self._write([rest])
            finally:
                self._unfinished = None  # written, or the connection is done for

    async def _write(self, buffers: list[bytes] | list[memoryview]) -> None:
        """With the lock held: write ``buffers``, yielding only if the socket is full."""
        if len(buffers) > MAX_WRITEV:
            buffers = [b"".join(buffers)]
        sent = self._send_now(buffers)
        for buf in buffers:
            if sent >= len(buf):
                sent -= len(buf)
                continue
            await self.stream.send_all(memoryview(buf)[sent:])
            sent = 0

    def _send_now(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Send what the socket takes right now, without a scheduler round trip.

        An echo is a few dozen bytes: one write(2), where send_all would add
        a yield.  Errors are translated as trio's SocketStream does.
        """
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            return 0
        try:
            fd = stream.socket.fileno()
            if len(buffers) == 1:
                return os.write(fd, buffers[0])
            return os.writev(fd, buffers)
        except BlockingIOError:
            return 0
        except OSError as exc:
            # fileno() is -1 once we closed it: EBADF, which is "closed", not "broken".
            raise translate_oserror(exc, "socket") from exc

    async def receive(self) -> ev.Event | None:
        """The next event from the client, or None when it closed the connection.

        Raises:
            RemoteProtocolError: the client sent something invalid.
            trio.BrokenResourceError: the connection broke.
        """
        while True:
            event = self.conn.next_event()
            # Only an unfinished frame counts, charged once the complete frames
            # are out, so a full budget never refuses anyone's whole message
            # (nor a request pipelined with its hello, waiting its turn: no more
            # is read until the complete frames are taken).
            self._account(self.conn.buffered if event is NEED_DATA else 0)
            if event is NEED_DATA:
                relayed = self.relayed_input
                if (
                    relayed is not None
                    and not self.conn.buffered
                    and (relayed.active or relayed.start())
                ):
                    # The relay's thread reads the client until it meets
                    # something that is not keys for the terminal.
                    try:
                        await relayed.returned.wait()
                    finally:
                        relayed.stop()  # at once if cancelled (a detach, a restart)
                    continue
                self.conn.receive_data(await self._receive_some())
                continue
            if event is CLOSED:
                return None
            assert isinstance(event, ev.Event)
            return event

    async def _receive_some(self) -> bytes | bytearray:
        """What the client sent next (b"" at its end of the stream).

        A socket read that came back short was most likely all there was: the
        next one waits for the socket first instead of trying and failing (a
        keystroke is one short read: this saves a recv(2) and an exception
        per key).  If more was there after all, the wait returns at once.
        """
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            return await stream.receive_some(RECEIVE_SIZE)
        sock = stream.socket
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        if self._read_short:
            await trio.lowlevel.wait_readable(sock)
            waited = True
        while True:
            try:
                data = os.read(sock.fileno(), RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                raise translate_oserror(exc, "socket") from exc
            break
        self._read_short = len(data) < RECEIVE_SIZE
        if not waited and not self._read_short:
            # A receive is a checkpoint, whatever was waiting.  A short read
            # (a hello and its pipelined request) needs no yield of its own:
            # the next receive waits for the socket first.
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    def _account(self, after: int) -> None:
        if self._budget is not None:
            before, self._charged = self._charged, after
            self._budget.charge(before, after)
