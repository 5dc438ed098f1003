"""A protocol connection over a trio stream: the sans-io codec plus real I/O.

Sends are serialised by a FIFO lock, because an attached client's output
pump and its input handler (answering a bad resize) may both send; the codec
is fed in the same order the bytes go out.
"""

from __future__ import annotations

from typing import Final

import trio

from ..protocol import CLOSED, NEED_DATA, Connection, Role
from ..protocol import events as ev

RECEIVE_SIZE: Final = 64 * 1024


class Channel:
    """One control connection, server side."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = Connection(Role.SERVER)
        self._send_lock = trio.StrictFIFOLock()

    async def send(self, *events: ev.Event) -> None:
        """Send events in order.

        Raises:
            trio.BrokenResourceError: the client went away.
        """
        async with self._send_lock:
            data = b"".join([self.conn.send(event) for event in events])
            await self.stream.send_all(data)

    async def receive(self) -> ev.Event | None:
        """The next event from the client, or None when it closed the connection.

        Raises:
            RemoteProtocolError: the client sent something invalid.
            trio.BrokenResourceError: the connection broke.
        """
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))
                continue
            if event is CLOSED:
                return None
            assert isinstance(event, ev.Event)
            return event
