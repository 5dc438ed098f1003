"""What the fuzz and load tests found bad clients could do to the daemon.

Each test here failed before the fix it comes with; tests/test_fuzz.py and
tests/test_load.py are where they were found.
"""

from __future__ import annotations

import msgpack
import trio

from consoled.protocol import DEFAULT_MAX_FRAME_SIZE, ErrorCode
from consoled.protocol import events as ev
from consoled.protocol.codec import encode_body
from tests.conftest import DaemonFactory
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder, running_session

#: Bound on one exchange with the daemon.
TIMEOUT = 10.0


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def vm_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == field:
                return int(value.split()[0])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_garbage_in_a_busy_stream_is_only_a_protocol_error(
    daemon_factory: DaemonFactory, nursery: trio.Nursery
) -> None:
    """Garbage from an attached client while its output pump is sending.

    The input loop's protocol error put the connection in ERROR; the pump's
    next ``output`` then raised LocalProtocolError, logged as an internal
    error.
    """
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "busy")
        await holder.stream(0, 30, 0)  # as fast as the daemon reads: the pump is always busy
        for attempt in range(20):
            client = await AsyncClient.connect(daemon.control_socket)
            try:
                attached = await client.request(ev.Attach("busy", replay=0))
                assert isinstance(attached, ev.Attached)
                assert isinstance(await client.receive(), ev.Output)
                await client.send_raw(frame(msgpack.packb({"data": b"no type"})))
                with trio.fail_after(TIMEOUT):
                    while True:
                        event = await client.receive()
                        assert event is not None, f"attempt {attempt}: closed without an error"
                        if isinstance(event, ev.Error):
                            break
                assert event.code is ErrorCode.BAD_MESSAGE, event
            finally:
                await client.aclose()
        await daemon.wait_event("client.protocol_error", count=20)
        assert not daemon.internal_errors()
    finally:
        await holder.aclose()


async def refuse(daemon: DaemonProcess, data: bytes) -> ev.Event | None:
    """Send ``data`` on a new connection; the daemon's answer, once it closed."""
    client = await AsyncClient.connect(daemon.control_socket, hello=False)
    try:
        await client.send_raw(data)
        answer = await client.receive(TIMEOUT)
        assert await client.receive(TIMEOUT) is None
        return answer
    finally:
        await client.aclose()


async def test_a_refused_frame_is_freed_at_once(daemon_factory: DaemonFactory) -> None:
    """A connection closed for a bad 1 MiB frame lets go of it when it closes.

    The protocol error was kept in the connection task's frame, and its
    traceback held that frame: a reference cycle, which kept the frame (and
    the connection's buffer) until Python's full garbage collection.  40
    refused frames grew the daemon's RSS by 24 MB; 200 by 32 MB.
    """
    daemon = await daemon_factory()
    bad = frame(msgpack.packb({"type": "hello", "version": b"v" * (DEFAULT_MAX_FRAME_SIZE - 64)}))
    assert len(bad) <= DEFAULT_MAX_FRAME_SIZE + 4
    for _ in range(5):  # the allocator's arenas for frames this size
        await refuse(daemon, bad)
    before = vm_kib(daemon.pid, "VmRSS")
    for _ in range(40):
        answer = await refuse(daemon, bad)
        assert isinstance(answer, ev.Error) and answer.code is ErrorCode.BAD_MESSAGE, answer
    grown = vm_kib(daemon.pid, "VmRSS") - before
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB over 40 refused frames of 1 MiB"


async def test_a_socket_removed_before_it_listens(daemon: DaemonProcess) -> None:
    """``create_socket`` then ``remove`` in one write, both answered before the
    session's intake task first ran: the task found no socket, and its
    assertion crashed the daemon (every terminal would have hung up)."""
    for round_ in range(3):
        client = await AsyncClient.connect(daemon.control_socket, hello=False)
        try:
            pipelined = [ev.Hello(1), ev.CreateSocket("gone"), ev.Remove("gone", force=True)]
            await client.send_raw(b"".join(frame(encode_body(e)) for e in pipelined))
            client.conn.send(ev.Hello(1))  # our codec's state, for reading the answers
            assert isinstance(await client.receive(), ev.Welcome)
            client.conn.send(ev.CreateSocket("gone"))
            assert isinstance(await client.receive(), ev.SocketCreated)
            client.conn.send(ev.Remove("gone", force=True))
            removed = await client.receive()
            assert removed == ev.Removed("gone", ev.SessionState.WAITING), (round_, removed)
            assert await client.list_sessions() == []
        finally:
            await client.aclose()
    assert daemon.proc is not None and daemon.proc.returncode is None
    assert not daemon.find("daemon.crashed")


async def test_a_full_buffer_budget_still_serves_whole_messages(
    daemon_factory: DaemonFactory,
) -> None:
    """Half-sent frames that fill ``--max-buffered`` lock nobody else out.

    Every read was charged to the budget before its complete frames were
    taken out, so once held half frames had filled it, any other client's
    next message, a 40-byte ``hello`` included, went over and was refused
    with buffer_limit: the load test's 300 half-senders locked every
    client out.  Only what is left of an unfinished frame counts now.
    """
    limit = 256 * 1024
    daemon = await daemon_factory("--max-buffered", str(limit))
    holders = []
    try:
        for _ in range(4):  # 4 x 64 KiB: the budget is full to the byte
            holder = await AsyncClient.connect(daemon.control_socket)
            holders.append(holder)
            await holder.send_raw((1 << 20).to_bytes(4, "big") + b"h" * (64 * 1024 - 4))
            await holder.wait_all_read()
        assert not daemon.find("client.protocol_error")
        # Everyone else is served as before...
        for _ in range(3):
            client = await AsyncClient.connect(daemon.control_socket)
            try:
                assert await client.list_sessions() == []
            finally:
                await client.aclose()
        # ... and a fifth half frame is what goes over.
        extra = await AsyncClient.connect(daemon.control_socket)
        holders.append(extra)
        await extra.send_raw((1 << 20).to_bytes(4, "big") + b"h" * 1000)
        error = await extra.receive()
        assert isinstance(error, ev.Error) and error.code is ErrorCode.BUFFER_LIMIT, error
    finally:
        for holder in holders:
            await holder.aclose()


async def test_a_client_that_leaves_a_busy_session_gives_its_size_back(
    daemon_factory: DaemonFactory, nursery: trio.Nursery
) -> None:
    """A lagged client (or one that detached) no longer holds the window size,
    and only a client that lagged is logged as lagged.

    The session's output drops every ended client from its fan-out; that
    dropped it without recomputing the size (so the small window of a
    client that had lagged stayed in force), and logged ``client.lagged``
    for clients that had merely detached (79 such warnings in one load test).
    """
    daemon = await daemon_factory("--client-queue", "64K", "--size-policy", "smallest")
    holder = await PtyHolder.start(nursery)
    reader = await AsyncClient.connect(daemon.control_socket)
    try:
        await running_session(daemon, holder, "busy")
        await holder.stream(0, 60, 5000)  # 320 KB/s: a reader keeps up, a stalled one lags
        reply = await reader.request(ev.Attach("busy", replay=0, rows=40, cols=100))
        assert isinstance(reply, ev.Attached), reply
        async with trio.open_nursery() as reading:

            async def read() -> None:
                while isinstance(await reader.receive(), ev.Output):
                    pass

            reading.start_soon(read)
            for _ in range(20):  # attach with a smaller window and detach, while output flows
                client = await AsyncClient.connect(daemon.control_socket)
                try:
                    reply = await client.request(ev.Attach("busy", replay=0, rows=20, cols=50))
                    assert isinstance(reply, ev.Attached), reply
                    await client.send(ev.Detach())
                    while not isinstance(event := await client.receive(), ev.Ended):
                        assert isinstance(event, ev.Output), event
                    assert event.reason is ev.EndReason.DETACHED, event
                finally:
                    await client.aclose()
            stalled = await AsyncClient.connect(daemon.control_socket)
            try:
                reply = await stalled.request(ev.Attach("busy", replay=0, rows=10, cols=50))
                assert isinstance(reply, ev.Attached), reply
                await daemon.wait_event("client.lagged")
                control = await AsyncClient.connect(daemon.control_socket)
                try:
                    session = await control.session("busy")
                finally:
                    await control.aclose()
            finally:
                await stalled.aclose()
            reading.cancel_scope.cancel()
        assert (session.rows, session.cols) == (40, 100), session
        await daemon.wait_event("client.lagged")
        assert len(daemon.find("client.lagged")) == 1, daemon.find("client.lagged")
    finally:
        await reader.aclose()
        await holder.aclose()
