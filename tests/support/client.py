"""An async control-protocol client on trio, built on the sans-io codec.

A second, independent user of the protocol package (the CLI's client is
blocking), which is also how tests send exactly what they want, bad input
included.
"""

from __future__ import annotations

import fcntl
import re
import socket
import sys
import termios

import trio

from consoled.protocol import CLOSED, MAX_DATA_CHUNK, NEED_DATA, PROTOCOL_VERSION, Connection, Role
from consoled.protocol import events as ev

#: Seconds any single receive may take in a test.
RECEIVE_TIMEOUT = 15.0


class AsyncClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(Role.CLIENT)

    @classmethod
    async def connect(cls, path: str, *, hello: bool = True) -> AsyncClient:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(path)
        client = cls(trio.SocketStream(sock))
        if hello:
            welcome = await client.request(ev.Hello(PROTOCOL_VERSION, "tests"))
            assert isinstance(welcome, ev.Welcome), welcome
        return client

    async def send(self, event: ev.Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> ev.Event | None:
        """The next event, None when the daemon closed the connection."""
        with trio.fail_after(timeout):
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                    continue
                if event is CLOSED:
                    return None
                assert isinstance(event, ev.Event)
                return event

    async def request(self, event: ev.Event) -> ev.Event:
        await self.send(event)
        reply = await self.receive()
        assert reply is not None, f"connection closed instead of answering {event}"
        return reply

    async def list_sessions(self, container: str | None = None) -> list[ev.SessionInfo]:
        reply = await self.request(ev.ListSessions(container))
        assert isinstance(reply, ev.SessionList), reply
        sessions = list(reply.sessions)
        while reply.more:
            nxt = await self.receive()
            assert isinstance(nxt, ev.SessionList)
            reply = nxt
            sessions.extend(reply.sessions)
        return sessions

    async def session(self, name: str) -> ev.SessionInfo:
        found = [s for s in await self.list_sessions() if s.session == name]
        assert found, f"no session {name}"
        return found[0]

    async def create_socket(self, name: str) -> str:
        reply = await self.request(ev.CreateSocket(name))
        assert isinstance(reply, ev.SocketCreated), reply
        return reply.path

    async def read_output_until(
        self, needle: bytes, timeout: float = RECEIVE_TIMEOUT
    ) -> tuple[bytes, ev.Ended | None]:
        """Collect output until ``needle`` appears or the stream ends."""
        out = bytearray()
        with trio.fail_after(timeout):
            while needle not in out:
                event = await self.receive(timeout)
                if isinstance(event, ev.Output):
                    out += event.data
                elif isinstance(event, ev.Ended):
                    return bytes(out), event
                elif event is None:
                    return bytes(out), None
        return bytes(out), None

    async def wait_all_read(self, timeout: float = RECEIVE_TIMEOUT) -> None:
        """Until the daemon has read every byte we sent (nothing announces it: polled).

        For a UNIX socket, SIOCOUTQ (alias TIOCOUTQ) is what the peer has not read.
        """
        fd = self.stream.socket.fileno()
        with trio.fail_after(timeout):
            while True:
                unread: bytes = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
                if not int.from_bytes(unread, sys.byteorder):
                    return
                await trio.sleep(0.001)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wait_output(
    control_socket: str, name: str, pattern: bytes | re.Pattern[bytes], timeout: float = 30.0
) -> None:
    """Wait until session ``name`` writes ``pattern``, following it as ``logs -f`` does."""
    regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
    follower = await AsyncClient.connect(control_socket)
    try:
        reply = await follower.request(ev.Logs(name, follow=True))
        assert isinstance(reply, ev.Attached), reply
        out = bytearray()
        with trio.fail_after(timeout):
            while not regex.search(out):
                event = await follower.receive(timeout)
                assert isinstance(event, ev.Output), (event, bytes(out[-200:]))
                out = out[-4096:] + event.data  # a match is short: keep only the tail
    finally:
        await follower.aclose()


async def screen_of(client: AsyncClient) -> tuple[bytes, bool]:
    """The ``screen`` messages that follow ``attached``, joined, and whether it is approximate."""
    data, approximate = b"", False
    while True:
        event = await client.receive()
        assert isinstance(event, ev.Screen), event
        data += event.data
        approximate = event.approximate
        if len(event.data) < MAX_DATA_CHUNK:  # the last one
            return data, approximate
