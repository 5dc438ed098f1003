"""The output hot path: frames encoded once per chunk, and written straight to idle clients.

A session's reader frames each chunk once (``EncodedOutput``) and, for a
client whose pump waits with nothing queued, writes it to the client's socket
itself.  What a full socket does not take is finished by the client's next
send before anything else.  These tests use real sockets and ptys: partial
writes, a client that stops reading in the middle of a frame while others go
on, and the order of keys under concurrent typing and resizing.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import time
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from consoled.io.fds import OwnedFd
from consoled.io.pty import PtyMaster
from consoled.io.relay import INPUT_BUFFER
from consoled.names import SessionName
from consoled.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Connection,
    EncodedOutput,
    ErrorCode,
    Role,
)
from consoled.protocol import events as ev
from consoled.server import cri, streams
from consoled.server.channel import Channel
from consoled.server.config import Limits
from consoled.server.session import Session
from consoled.server.sizepolicy import SizePolicy
from consoled.server.streams import PendingInput, _pump_output, _write_input
from consoled.server.subscriber import Subscriber
from tests.support.client import AsyncClient
from tests.support.inproc import InProcDaemon, hand_master, inproc_daemon

WAIT = 15.0
#: The tests of whole streams run with each relay: the native relay's thread
#: (consoled/io/relay.py, the default) and the event loop (``--relay python``).
RELAYS = pytest.mark.parametrize("relay", ["native", "python"])


class Peer:
    """The client end of a socketpair, decoding what the channel sent."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.conn = Connection(Role.CLIENT)

    async def send(self, event: ev.Event) -> None:
        await self.sock.send(self.conn.send(event))

    async def receive(self) -> ev.Event:
        with trio.fail_after(WAIT):
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    data = await self.sock.recv(65536)
                    assert data, "the channel closed the connection"
                    self.conn.receive_data(data)
                    continue
                assert isinstance(event, ev.Event), event
                return event

    async def output(self, size: int) -> bytes:
        """Exactly ``size`` bytes of output (a frame never carries part of another's)."""
        got = b""
        while len(got) < size:
            event = await self.receive()
            assert isinstance(event, ev.Output), event
            got += event.data
        assert len(got) == size
        return got


@asynccontextmanager
async def streaming_pair(sndbuf: int | None = None) -> AsyncIterator[tuple[Channel, Peer]]:
    """A server channel and its peer, attached (both in state STREAMING)."""
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        if sndbuf is not None:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        channel = Channel(trio.SocketStream(a))
        peer = Peer(b)
        await peer.send(ev.Hello(PROTOCOL_VERSION, "test"))
        assert isinstance(await channel.receive(), ev.Hello)
        await channel.send(ev.Welcome(PROTOCOL_VERSION, "test", 1))
        assert isinstance(await peer.receive(), ev.Welcome)
        await peer.send(ev.Attach("s"))
        assert isinstance(await channel.receive(), ev.Attach)
        await channel.send(ev.Attached("s", ev.SessionState.RUNNING, 24, 80, 0))
        assert isinstance(await peer.receive(), ev.Attached)
        yield channel, peer


def pattern(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


# --- the channel ------------------------------------------------------------------------------


async def test_output_written_at_once_arrives_whole() -> None:
    async with streaming_pair() as (channel, peer):
        assert channel.send_encoded_now(EncodedOutput(b"echo"))
        assert not channel.unfinished
        assert await peer.receive() == ev.Output(b"echo")


async def test_a_partial_write_is_finished_before_anything_else() -> None:
    async with streaming_pair(sndbuf=8192) as (channel, peer):
        big = pattern(200_000)
        assert channel.send_encoded_now(EncodedOutput(big)), "the socket took part of it"
        assert channel.unfinished
        # Nothing else may go out in the middle of that frame.
        assert not channel.send_encoded_now(EncodedOutput(b"later"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.send, ev.Error(ErrorCode.INPUT_DROPPED, "told"))
            await trio.testing.wait_all_tasks_blocked()  # finishing the frame first
            nursery.start_soon(channel.send_output, [EncodedOutput(b"queued")])
            assert await peer.output(len(big)) == big
            assert await peer.receive() == ev.Error(ErrorCode.INPUT_DROPPED, "told")
            assert await peer.receive() == ev.Output(b"queued")
        assert not channel.unfinished


async def test_flush_finishes_a_partial_write() -> None:
    async with streaming_pair(sndbuf=8192) as (channel, peer):
        big = pattern(100_000, seed=3)
        assert channel.send_encoded_now(EncodedOutput(big))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.flush)
            assert await peer.output(len(big)) == big
        assert not channel.unfinished
        assert channel.send_encoded_now(EncodedOutput(b"next"))
        assert await peer.receive() == ev.Output(b"next")


async def test_nothing_is_written_at_once_while_a_send_is_under_way() -> None:
    async with streaming_pair(sndbuf=8192) as (channel, peer):
        big = pattern(300_000, seed=5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.send_output, [EncodedOutput(big)])
            await trio.testing.wait_all_tasks_blocked()  # blocked on the full socket
            assert not channel.send_encoded_now(EncodedOutput(b"x")), "it would cut into a frame"
            assert await peer.output(len(big)) == big
        assert channel.send_encoded_now(EncodedOutput(b"x"))
        assert await peer.receive() == ev.Output(b"x")


async def test_a_full_socket_refuses_and_loses_nothing() -> None:
    async with streaming_pair(sndbuf=8192) as (channel, peer):
        accepted = b""
        for i in range(1000):
            piece = pattern(1000, seed=i)
            if not channel.send_encoded_now(EncodedOutput(piece)):
                break
            accepted += piece
        else:
            pytest.fail("an unread socket took a megabyte")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.flush)
            assert await peer.output(len(accepted)) == accepted
        assert channel.send_encoded_now(EncodedOutput(b"room again"))
        assert await peer.receive() == ev.Output(b"room again")


async def test_a_broken_or_closed_socket_refuses_without_raising() -> None:
    async with streaming_pair() as (channel, peer):
        peer.sock.close()
        assert not channel.send_encoded_now(EncodedOutput(b"x")), "broken: refused"
        with pytest.raises(trio.BrokenResourceError):
            await channel.send_output([EncodedOutput(b"x")])  # the pump finds out
    async with streaming_pair() as (channel, peer):
        assert isinstance(channel.stream, trio.SocketStream)
        channel.stream.socket.close()
        assert not channel.send_encoded_now(EncodedOutput(b"x")), "closed: refused"


async def test_nothing_is_written_at_once_before_the_stream_starts() -> None:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        channel = Channel(trio.SocketStream(a))
        assert not channel.send_encoded_now(EncodedOutput(b"x"))


# --- the subscriber ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.accept = True

    def __call__(self, output: EncodedOutput) -> bool:
        if self.accept:
            self.sent.append(output.size)
        return self.accept


async def test_output_goes_straight_out_only_while_the_pump_waits_on_an_empty_queue() -> None:
    sub = Subscriber(1000, read_only=False, label="t")
    sub.send_now = send = Recorder()
    sub.offset = 100
    assert sub.push(EncodedOutput(b"aaaa"))  # the pump is not waiting (busy, or not started)
    assert sub.queued == 4
    assert send.sent == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.wait_output)  # something is queued: returns at once
    assert [len(c) for c in sub.take(100)] == [4]
    assert sub.offset == 104
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.wait_output)
        await trio.testing.wait_all_tasks_blocked()
        assert sub.push(EncodedOutput(b"bb"))  # waiting, nothing queued: straight out
        assert send.sent == [2]
        assert sub.offset == 106, "counted as taken"
        assert sub.queued == 0
        send.accept = False
        assert sub.push(EncodedOutput(b"ccc"))  # the socket refused: queued, the pump woken
        assert sub.queued == 3
        send.accept = True
        assert sub.push(EncodedOutput(b"d"))  # behind queued output: queued too
        assert send.sent == [2]
    assert [len(c) for c in sub.take(100)] == [3, 1]
    assert sub.offset == 110


async def test_a_lagging_client_is_lagged_before_anything_is_sent() -> None:
    sub = Subscriber(10, read_only=False, label="t")
    sub.send_now = send = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sub.wait_output)
        await trio.testing.wait_all_tasks_blocked()
        assert not sub.push(EncodedOutput(b"x" * 11))
    assert send.sent == []
    assert sub.end_notice is not None
    assert sub.end_notice.reason is ev.EndReason.LAGGED


# --- the daemon, with real ptys ---------------------------------------------------------------


async def running(d: InProcDaemon, name: str, slaves: list[int]) -> int:
    """A running session on a raw pty of ours; returns the slave (non-blocking)."""
    c = await d.connect()
    path = await c.create_socket(name)
    await c.aclose()
    _, slave = hand_master(path)
    slaves.append(slave)
    tty.setraw(slave)
    os.set_blocking(slave, False)
    with trio.fail_after(WAIT):
        await d.table.get(name).running.wait()
    return slave


async def write_slave(slave: int, data: bytes) -> None:
    view = memoryview(data)
    with trio.fail_after(WAIT):
        while view:
            try:
                view = view[os.write(slave, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(slave)


async def read_slave(slave: int, size: int) -> bytes:
    got = b""
    with trio.fail_after(WAIT):
        while len(got) < size:
            await trio.lowlevel.wait_readable(slave)
            got += os.read(slave, size - len(got))
    return got


async def collect(client: AsyncClient, size: int) -> bytes:
    out = b""
    with trio.fail_after(WAIT):
        while len(out) < size:
            event = await client.receive()
            assert isinstance(event, ev.Output), event
            out += event.data
    return out


@RELAYS
async def test_a_client_that_stops_reading_mid_frame_gets_every_byte_once_later(
    short_tmp: Path, slaves: list[int], relay: str
) -> None:
    async with inproc_daemon(short_tmp / "s", native_relay=relay == "native") as d:
        slave = await running(d, "f1", slaves)
        master = d.table.get("f1").master
        assert master is not None
        clients = [await d.connect() for _ in range(3)]
        for c in clients:
            assert isinstance(await c.request(ev.Attach("f1", replay=0)), ev.Attached)
        # Small writes first: each goes straight from the reader to the sockets.
        for i in range(20):
            await write_slave(slave, b"key %d\r\n" % i)
            for c in clients:
                out, _ = await c.read_output_until(b"key %d\r\n" % i)
                assert out == b"key %d\r\n" % i
        # (Which relay read them: its thread, or the event loop.)
        assert (master.source is not None) == (relay == "native")
        # Then far more than a socket holds, while the last client reads nothing:
        # its socket fills in the middle of a frame.
        flood = pattern(1_500_000, seed=9)
        slow = clients[-1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_slave, slave, flood)
            for c in clients[:-1]:
                assert await collect(c, len(flood)) == flood
        session = d.table.get("f1")
        assert session.record.end >= 20 * 7 + len(flood)
        assert await collect(slow, len(flood)) == flood, "no gap, no repeat, frames whole"
        # And all of them go on as before.
        await write_slave(slave, b"after")
        for c in clients:
            assert await collect(c, 5) == b"after"


@RELAYS
async def test_keys_keep_their_order_under_concurrent_typing_and_resizing(
    short_tmp: Path, slaves: list[int], relay: str
) -> None:
    async with inproc_daemon(short_tmp / "s", native_relay=relay == "native") as d:
        slave = await running(d, "k1", slaves)
        typists = [await d.connect() for _ in range(2)]
        for c in typists:
            reply = await c.request(ev.Attach("k1", replay=0, rows=24, cols=80))
            assert isinstance(reply, ev.Attached)
        keys = 300

        async def type_and_resize(c: AsyncClient, tag: bytes) -> None:
            for i in range(keys):
                await c.send(ev.Input(tag + b"%03d" % i))
                if i % 7 == 0:
                    await c.send(ev.WindowSize(20 + i % 5, 70 + i % 11))
                if i % 50 == 0:
                    await trio.lowlevel.checkpoint()
            await c.send(ev.WindowSize(30, 100))

        async with trio.open_nursery() as nursery:
            for c, tag in zip(typists, (b"a", b"b"), strict=True):
                nursery.start_soon(type_and_resize, c, tag)
            got = await read_slave(slave, 2 * keys * 4)
        for tag in (b"a", b"b"):
            mine = [got[i : i + 4] for i in range(0, len(got), 4) if got[i : i + 1] == tag]
            assert mine == [tag + b"%03d" % i for i in range(keys)], "every key once, in order"
        for c in typists:
            await c.wait_all_read()
        await trio.testing.wait_all_tasks_blocked()
        packed = fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
        assert struct.unpack("HHHH", packed)[:2] == (30, 100)


@RELAYS
async def test_keys_that_wait_for_a_full_terminal_reach_it_in_order_later(
    short_tmp: Path, slaves: list[int], relay: str
) -> None:
    """Keys go straight to the terminal until it is full; then they queue for
    the input writer (started only then), and the terminal gets every key
    once, in order, when it reads again."""
    async with inproc_daemon(short_tmp / "s", native_relay=relay == "native") as d:
        slave = await running(d, "full", slaves)
        tty.setraw(slave)  # no line editing: the kernel's input buffer really fills
        c = await d.connect()
        assert isinstance(await c.request(ev.Attach("full", replay=0)), ev.Attached)
        typed = b"".join(b"%05d," % i for i in range(8000))  # 48 KB: the pty takes about 20
        for start in range(0, len(typed), 6):
            await c.send(ev.Input(typed[start : start + 6]))
        await trio.testing.wait_all_tasks_blocked()
        os.set_blocking(slave, False)
        first = os.read(slave, len(typed))
        assert 0 < len(first) < len(typed), "the rest waits in the daemon's queue"
        os.set_blocking(slave, True)
        assert first + await read_slave(slave, len(typed) - len(first)) == typed
        await c.send(ev.Input(b"after"))  # straight again once the queue is empty
        assert await read_slave(slave, 5) == b"after"


async def test_a_stopped_input_writer_writes_nothing_it_woke_for() -> None:
    """A restart stops the input writer while keys it was just woken for are
    queued: they stay queued (the client sends them to the successor), and
    none reaches the terminal uncounted."""
    # Was: a writer woken but not yet running took the queue and wrote it
    # after the restart had counted the input consumed: those keys came twice.
    master, slave = os.openpty()
    session = Session.new(
        1, SessionName.parse("w1"), scrollback=4096, size_policy=SizePolicy.LATEST
    )
    try:
        session.start(OwnedFd(master, "pty"), 0)
        pending = PendingInput()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_input, session, pending)
            await trio.testing.wait_all_tasks_blocked()  # waiting for input
            assert pending.put(b"typed-just-before")  # wakes the writer...
            await pending.stop()  # ...which has not run yet
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert pending.consumed == 0
        os.set_blocking(slave, False)
        with pytest.raises(BlockingIOError):
            os.read(slave, 100)  # the terminal got nothing
    finally:
        session.close()
        os.close(slave)


async def test_the_reader_writes_part_of_a_frame_and_the_pump_finishes_it(
    short_tmp: Path, slaves: list[int]
) -> None:
    # The daemon's own sockets take a 64 KiB frame whole (one skb); a client
    # socket with the smallest buffer makes the session's reader write only
    # part of one.  The real reader, hub and pump; only the client socket is
    # ours.  Whether a given flood cuts a frame depends on how the pty hands
    # out its bytes: floods are repeated (a few at most) until one does.
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "p1", slaves)
        session = d.table.get("p1")
        async with streaming_pair(sndbuf=1) as (channel, peer):
            sub = Subscriber(64 * 1024 * 1024, read_only=True, label="probe")
            session.attach(sub, replay=0, nudge=False)
            partial = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump_output, channel, session, sub)
                await trio.testing.wait_all_tasks_blocked()
                await write_slave(slave, b"first")
                assert await peer.output(5) == b"first"
                for attempt in range(10):
                    flood = pattern(300_000, seed=attempt)
                    end = session.record.end + len(flood)
                    written = trio.Event()

                    async def flood_then_tell(flood: bytes, written: trio.Event) -> None:
                        await write_slave(slave, flood)
                        written.set()

                    nursery.start_soon(flood_then_tell, flood, written)
                    with trio.fail_after(WAIT):  # the client reads nothing meanwhile
                        while not written.is_set() or session.record.end < end:
                            partial |= channel.unfinished
                            await trio.lowlevel.checkpoint()
                    assert await peer.output(len(flood)) == flood
                    assert sub.offset == session.record.end, "resume would start right after"
                    if partial:
                        break
                sub.end(ev.EndReason.DETACHED, "bye")
                ended = await peer.receive()
                assert isinstance(ended, ev.Ended), ended
            assert partial, "the reader left part of a frame for the pump"


# --- reading: a short read was all there was ------------------------------------------------


async def test_a_short_pty_read_ends_the_batch_and_nothing_is_missed() -> None:
    master_fd, slave = os.openpty()
    master = PtyMaster(OwnedFd(master_fd, "pty"), 0)
    try:
        tty.setraw(slave)
        os.set_blocking(slave, False)
        with trio.fail_after(WAIT):
            os.write(slave, b"k")
            assert await master.read_batch() == b"k"
            assert master.drained, "an echo's read ends the batch: no read that fails"
            # Output written while the reader thought the pty empty is read all the same.
            os.write(slave, b"x" * 300)
            os.write(slave, b"y" * 300)
            got = b""
            while len(got) < 600:
                got += await master.read_batch()
            assert got == b"x" * 300 + b"y" * 300
            big = pattern(100_000)
            got = b""
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_slave, slave, big)
                while len(got) < len(big):
                    got += await master.read_batch()
            assert got == big
    finally:
        master.close()
        os.close(slave)


@RELAYS
async def test_messages_larger_than_a_read_arrive_whole_and_in_order(
    short_tmp: Path, slaves: list[int], relay: str
) -> None:
    async with inproc_daemon(short_tmp / "s", native_relay=relay == "native") as d:
        slave = await running(d, "r1", slaves)
        c = await d.connect()
        assert isinstance(await c.request(ev.Attach("r1", replay=0)), ev.Attached)
        # One write of about 150 KB, more than one receive of the daemon's: sizes
        # (which the terminal takes however fast) and then keys.
        burst = b"".join(c.conn.send(ev.WindowSize(20 + i % 10, 80)) for i in range(6000))
        await c.send_raw(burst + c.conn.send(ev.WindowSize(33, 99)) + c.conn.send(ev.Input(b"<>")))
        assert len(burst) > 2 * 64 * 1024
        assert await read_slave(slave, 2) == b"<>"
        packed = fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8)
        assert struct.unpack("HHHH", packed)[:2] == (33, 99)
        await c.send(ev.Input(b"!"))  # then a single key, after a short read
        assert await read_slave(slave, 1) == b"!"


async def test_the_relay_thread_takes_one_clients_keys_and_gives_them_back_to_a_second(
    short_tmp: Path, slaves: list[int]
) -> None:
    """With one client attached, the native relay's thread reads its input and
    writes the keys itself; a second client (whose typing may decide the size)
    makes the event loop read both again.  Every key arrives once, in order."""
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "two", slaves)
        first = await d.connect()
        assert isinstance(await first.request(ev.Attach("two", replay=0)), ev.Attached)
        session = d.table.get("two")
        (sub,) = list(session.hub)
        assert sub.link is not None
        for i in range(50):
            await first.send(ev.Input(b"a%02d" % i))
        assert await read_slave(slave, 150) == b"".join(b"a%02d" % i for i in range(50))
        assert sub.link.input, "the thread reads the only client's input"
        second = await d.connect()
        assert isinstance(await second.request(ev.Attach("two", replay=0)), ev.Attached)
        assert not sub.link.input, "a second client takes it back"

        async def type_keys(c: AsyncClient, tag: bytes) -> None:
            for i in range(100):
                await c.send(ev.Input(tag + b"%02d" % (i % 100)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(type_keys, first, b"a")
            nursery.start_soon(type_keys, second, b"b")
            got = await read_slave(slave, 2 * 100 * 3)
        for tag in (b"a", b"b"):
            mine = [got[i : i + 3] for i in range(0, len(got), 3) if got[i : i + 1] == tag]
            assert mine == [tag + b"%02d" % i for i in range(100)]
        await second.aclose()
        d.clients.remove(second)
        # Alone again: the thread takes the first one's keys once more.
        await first.send(ev.Input(b"z"))
        assert await read_slave(slave, 1) == b"z"
        with trio.fail_after(WAIT):
            while not sub.link.input:
                await first.send(ev.Input(b"z"))
                assert await read_slave(slave, 1) == b"z"


def _winsize(slave: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


async def test_the_relay_thread_resizes_for_the_only_client_and_the_daemon_follows(
    short_tmp: Path, slaves: list[int]
) -> None:
    """The only attached client's window size is put in force by the native
    relay's thread, which goes on reading its input; the session (its size
    for ``ls``, its screen) learns of it after.  A ``resize`` request that
    comes later wins, even when the event loop had not heard of the thread's
    size yet."""
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "w", slaves)
        client = await d.connect()
        reply = await client.request(ev.Attach("w", replay=0, rows=24, cols=80))
        assert isinstance(reply, ev.Attached)
        session = d.table.get("w")
        (sub,) = list(session.hub)
        assert sub.link is not None
        session.screen_state()  # as a query or an attach with the screen makes it
        assert session.screen is not None
        await client.send(ev.Input(b"k"))
        assert await read_slave(slave, 1) == b"k"
        assert sub.link.input, "the thread reads the only client's input"

        await client.send(ev.WindowSize(33, 101))
        with trio.fail_after(WAIT):
            # The thread tells the event loop late (no event of ours to await).
            while (session.rows, session.cols) != (33, 101):  # noqa: ASYNC110
                await trio.sleep(0.001)
        assert _winsize(slave) == (33, 101)
        assert sub.link.input, "the thread went on reading: the size was its to set"
        screen = session.screen.screen
        assert (screen.rows, screen.cols) == (33, 101)
        info = await d.connect()
        (listed,) = await info.list_sessions()
        assert (listed.rows, listed.cols) == (33, 101)

        # The thread sets a size the event loop has not heard of yet (it is
        # held here, in a blocking wait); a `resize` request then wins.
        await client.send(ev.WindowSize(40, 120))
        deadline = time.monotonic() + WAIT
        while _winsize(slave) != (40, 120):
            assert time.monotonic() < deadline, "the thread did not set the size"
            time.sleep(0.001)  # noqa: ASYNC251 - the event loop must not run meanwhile
        session.set_size(50, 130)
        assert sub.link.take_size() is None, "the request took the thread's size first"
        await trio.testing.wait_all_tasks_blocked()
        assert (session.rows, session.cols) == (50, 130) == _winsize(slave)
        assert (session.screen.screen.rows, session.screen.screen.cols) == (50, 130)


async def test_a_link_that_could_not_start_is_started_once_the_event_loop_caught_up(
    short_tmp: Path, slaves: list[int]
) -> None:
    """A client's link cannot start while the relay's thread holds output the
    event loop has not taken (its pump then waits with the link stopped); the
    event loop writes that output itself, and starts the link after it: the
    thread writes what comes next."""
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "late", slaves)
        client = await d.connect()
        reply = await client.request(ev.Attach("late", replay=0))
        assert isinstance(reply, ev.Attached)
        await trio.testing.wait_all_tasks_blocked()
        session = d.table.get("late")
        (sub,) = list(session.hub)
        assert sub.link is not None and sub.link.active
        assert sub.relayed_input is not None
        channel = sub.relayed_input.channel  # type: ignore[attr-defined]
        # As when its pump tried while the thread held output: waiting, stopped.
        channel.deactivate_link()
        os.write(slave, b"first")
        assert await collect(client, 5) == b"first"
        await trio.testing.wait_all_tasks_blocked()
        assert sub.link.active, "started once the output it waited for was written"
        handled = sub.link.handled
        os.write(slave, b"second")
        assert await collect(client, 6) == b"second"
        assert sub.link.handled == handled + 6, "the thread wrote it"


async def test_the_relay_takes_an_attached_client_on_before_the_attach_is_recorded(
    short_tmp: Path, slaves: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the client has its reply, the relay's thread writes its output and
    reads its keys at once: its first echo waits neither for the attach's log
    records nor for the stream's tasks to start."""
    seen: list[tuple[bool, bool]] = []
    recorded = vars(streams)["audit"]

    def audit(action: str, **fields: object) -> None:
        if action == "attach":
            sub = list(d.table.get("early").hub)[-1]  # the newest
            assert sub.link is not None
            seen.append((sub.link.active, sub.link.input))
        recorded(action, **fields)

    monkeypatch.setattr(streams, "audit", audit)
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "early", slaves)
        client = await d.connect()
        assert isinstance(await client.request(ev.Attach("early", replay=0)), ev.Attached)
        assert seen == [(True, True)]
        await client.send(ev.Input(b"k"))
        assert await read_slave(slave, 1) == b"k"
        os.write(slave, b"echo")
        assert await collect(client, 4) == b"echo"
        # With a replay queued, the pump sends it first, then the thread takes over.
        other = await d.connect()
        await client.aclose()
        d.clients.remove(client)
        reply = await other.request(ev.Attach("early", replay=4))
        assert isinstance(reply, ev.Attached) and reply.replay == 4
        assert seen[1] == (False, False), "a replay goes first"
        assert await collect(other, 4) == b"echo"


async def test_the_relays_input_buffer_counts_against_max_buffered(
    short_tmp: Path, slaves: list[int]
) -> None:
    """The thread's buffer for a client's input is held for that client as a
    half-read message is: within --max-buffered.  Without room for it, the
    event loop reads the client, and its keys still arrive."""
    # Was: each client the thread read could hold 64 KiB outside the bound.
    limits = Limits(buffered=INPUT_BUFFER + 4096)
    async with inproc_daemon(short_tmp / "s", limits=limits) as d:
        slave_a = await running(d, "a", slaves)
        slave_b = await running(d, "b", slaves)
        first, second = await d.connect(), await d.connect()
        assert isinstance(await first.request(ev.Attach("a", replay=0)), ev.Attached)
        assert isinstance(await second.request(ev.Attach("b", replay=0)), ev.Attached)
        await trio.testing.wait_all_tasks_blocked()
        (sub_a,) = list(d.table.get("a").hub)
        (sub_b,) = list(d.table.get("b").hub)
        assert sub_a.link is not None and sub_b.link is not None
        assert sub_a.link.input, "the thread reads the first client"
        assert not sub_b.link.input, "no room in the bound for a second buffer"
        await first.send(ev.Input(b"1"))
        await second.send(ev.Input(b"2"))
        assert await read_slave(slave_a, 1) == b"1"
        assert await read_slave(slave_b, 1) == b"2"
        # The first client leaves: its buffer leaves the bound with it.
        await first.aclose()
        d.clients.remove(first)
        await trio.testing.wait_all_tasks_blocked()
        assert not list(d.table.get("a").hub)
        third = await d.connect()
        assert isinstance(await third.request(ev.Attach("a", replay=0)), ev.Attached)
        await trio.testing.wait_all_tasks_blocked()
        (sub_c,) = list(d.table.get("a").hub)
        assert sub_c.link is not None and sub_c.link.input, "its room was given back"
        await third.send(ev.Input(b"3"))
        assert await read_slave(slave_a, 1) == b"3"


async def test_output_is_dated_when_the_thread_read_it(
    short_tmp: Path, tmp_path: Path, slaves: list[int]
) -> None:
    """The time index and a CRI log file date output by when the relay's thread
    read it, not when the event loop heard of it (up to NOTIFY_DELAY later, or
    later still when the event loop is busy)."""
    log_dir = tmp_path / "logs"
    async with inproc_daemon(short_tmp / "s", log_dir=log_dir, log_file_format="cri") as d:
        slave = await running(d, "dated", slaves)
        client = await d.connect()
        assert isinstance(await client.request(ev.Attach("dated", replay=0)), ev.Attached)
        await trio.testing.wait_all_tasks_blocked()
        session = d.table.get("dated")
        assert session.master is not None and session.master.source is not None
        source, start = session.master.source, session.record.end
        before = time.time_ns()
        os.write(slave, b"a line\n")
        deadline = time.monotonic() + WAIT
        while source.end < start + 7:
            assert time.monotonic() < deadline, "the thread did not read it"
            time.sleep(0.001)  # noqa: ASYNC251 - the event loop must not run meanwhile
        read_by = time.time_ns()
        time.sleep(0.05)  # noqa: ASYNC251 - a busy event loop, hearing of it late
        assert await collect(client, 7) == b"a line\n"
        await trio.testing.wait_all_tasks_blocked()
        assert session.record.end == start + 7
        dated = session.record.time_at(start)
        assert dated is not None and before <= dated <= read_by
        assert session.log_file is not None
        await session.log_file.wait_idle()
        (path,) = log_dir.iterdir()
        timestamp, stream, tag, text = cri.decode_record(path.read_bytes().splitlines()[0])
        assert (stream, tag, text) == (b"stdout", b"F", b"a line")
        assert before <= cri.parse_timestamp(timestamp) <= read_by
