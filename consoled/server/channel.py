"""A protocol connection over a trio stream: the sans-io codec plus real I/O.

Sends are serialised by a FIFO lock, because an attached client's output
pump and its input handler (answering a bad resize) may both send; the codec
is fed in the same order the bytes go out.
"""

from __future__ import annotations

import os
from typing import Final

import trio

from ..io.fds import translate_oserror
from ..protocol import (
    CLOSED,
    NEED_DATA,
    Connection,
    ErrorCode,
    RemoteProtocolError,
    Role,
    State,
)
from ..protocol import events as ev

RECEIVE_SIZE: Final = 64 * 1024


class ByteBudget:
    """Bytes of unfinished frames held for all connections together, and their bound.

    A read is charged after the complete frames in it were taken out, so the
    bound can be passed by at most one read (RECEIVE_SIZE) at a time.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0

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

    def release(self) -> None:
        """Give back this connection's share of the budget (it is closing)."""
        if self._budget is not None:
            self._budget.charge(self._charged, 0)
        self._charged = 0

    async def send(self, *events: ev.Event) -> None:
        """Send events in order.

        Raises:
            trio.BrokenResourceError: the client went away.
            trio.ClosedResourceError: the client broke the protocol (the
                connection is closing: only the fatal error may still go out).
        """
        # Uncontended (the usual case), take the lock without the scheduler
        # round trip of ``async with``; send_all yields once anyway.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            # An attached client's input loop may have just received garbage
            # while its output pump was about to send: the pump stops here.
            if self.conn.state is State.ERROR and not all(
                isinstance(e, ev.Error) and e.code.fatal for e in events
            ):
                raise trio.ClosedResourceError("the client broke the protocol")
            data = b"".join([self.conn.send(event) for event in events])
            sent = self._send_now(data)
            if sent < len(data):
                await self.stream.send_all(memoryview(data)[sent:])
        finally:
            self._send_lock.release()

    def _send_now(self, data: bytes) -> int:
        """Send what the socket takes right now, without a scheduler round trip.

        An echo is a few dozen bytes: one write(2), where send_all would add
        a yield.  Errors are translated as trio's SocketStream does.
        """
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            return 0
        try:
            return os.write(stream.socket.fileno(), data)
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
            # Charged once the complete frames are out: only an unfinished frame
            # counts, so a full budget never refuses anyone's whole message.
            self._account()
            if event is NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))
                continue
            if event is CLOSED:
                return None
            assert isinstance(event, ev.Event)
            return event

    def _account(self) -> None:
        if self._budget is not None:
            after = self.conn.buffered
            before, self._charged = self._charged, after
            self._budget.charge(before, after)
