"""The native relay (consoled/io/_relay.c) on its own: real ptys, memfds and sockets.

Its thread reads a master, puts the bytes in the ring, writes them as
``output`` frames to the active links and queues them for Python.  These
tests hold it to the rules the daemon relies on (consoled/io/relay.py): the
frames are the protocol's, byte for byte; the ring has every byte at its
place before any client does; the thread never runs more than the slack
ahead of Python; a socket that takes part of a frame deactivates the link
and the rest is kept, so that what the client gets is the output exactly
once, in order; a paused or closed source reads nothing more; the input
half writes keys and puts window sizes in force, and hands back anything
else whole.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgpack
import pytest

# Not skipped when it was not built (pip builds it optionally): this fails.
from consoled.io import _relay
from consoled.io.fds import OwnedFd
from consoled.io.record import VERSION, WRITE_SLACK, Record
from consoled.io.relay import NOTIFY_DELAY
from consoled.protocol import EncodedOutput, codec
from consoled.protocol import events as ev
from consoled.protocol.codec import INPUT_PREFIX, OUTPUT_PREFIX
from tests.support.records import OLD_SLACK, load_old

#: Seconds any wait here may take.
WAIT = 10.0


def pattern(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def start_relay(
    scrollback: int, version: int = VERSION, notify_delay: float = NOTIFY_DELAY
) -> tuple[_relay.Relay, _relay.Source, OwnedFd, int, Record]:
    """A relay reading the master of a raw pty (resumed): the relay, its
    source, the master's owner, the slave, and the ring (a record of
    ``version``, an older daemon's if not the current one)."""
    relay = _relay.Relay(OUTPUT_PREFIX, INPUT_PREFIX, notify_delay)
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    record = (
        Record.create(scrollback, {}) if version == VERSION else load_old(version, scrollback, {})
    )
    layout = record.layout()
    assert layout is not None
    owner = OwnedFd(master, "pty")
    source = _relay.Source(relay, master, *layout)
    owner.before_close = source.close
    source.resume()
    return relay, source, owner, slave, record


@contextmanager
def relayed(
    scrollback: int = 256 * 1024, version: int = VERSION, notify_delay: float = NOTIFY_DELAY
) -> Iterator[tuple[_relay.Relay, _relay.Source, int, Record]]:
    """:func:`start_relay`, closed on the way out."""
    relay, source, owner, slave, record = start_relay(scrollback, version, notify_delay)
    try:
        yield relay, source, slave, record
    finally:
        owner.close()
        os.close(slave)
        record.close()
        relay.close()


def take_all(source: _relay.Source, record: Record, size: int) -> bytes:
    """Take (as the session's pump does) until ``size`` bytes came."""
    got = b""
    deadline = time.monotonic() + WAIT
    while len(got) < size:
        data, unstored, hung_up, error, _ = source.take()
        assert unstored == 0 and error == 0
        record.appended(data)
        got += data
        assert not hung_up or len(got) >= size, "hung up early"
        if len(got) < size:
            assert time.monotonic() < deadline, f"only {len(got)} of {size} bytes"
            time.sleep(0.001)
    return got


def writer(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:4096]) :]

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def decode_frames(data: bytes) -> list[bytes]:
    """The data of the whole ``output`` frames in ``data``, in order."""
    out = []
    at = 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        if at + 4 + size > len(data):
            break
        event = codec.decode_body(data[at + 4 : at + 4 + size], 1 << 20, 64)
        assert isinstance(event, ev.Output), event
        out.append(event.data)
        at += 4 + size
    return out


def test_the_ring_has_every_byte_before_python_takes_it() -> None:
    with relayed() as (_, source, slave, record):
        data = pattern(100_000)
        thread = writer(slave, data)
        deadline = time.monotonic() + WAIT
        got = b""
        layout = record.layout()
        assert layout is not None
        while len(got) < len(data):
            # What the thread read is in the ring already, at its place (no
            # wrap: the ring is larger than the data), and the ring's end says so.
            end = source.end
            assert end - record.end <= WRITE_SLACK, "never further ahead than the slack"
            ring = os.pread(layout.fd, end - record.end, layout.data_offset + record.end)
            assert ring == data[record.end : end]
            assert int.from_bytes(os.pread(layout.fd, 8, layout.end_at), "little") >= end
            taken, *_ = source.take()
            assert len(taken) >= end - record.end
            record.appended(taken)
            got += taken
            assert time.monotonic() < deadline
            time.sleep(0.001)
        thread.join(WAIT)
        assert got == data
        assert b"".join(record.tail()) == data


@pytest.mark.parametrize(("version", "slack"), [(VERSION, WRITE_SLACK), (2, OLD_SLACK)])
def test_it_never_runs_further_ahead_of_python_than_the_slack(version: int, slack: int) -> None:
    """Each ring's own: a record an older daemon made has less room than a new one."""
    with relayed(version=version) as (_, source, slave, record):
        data = pattern(600_000, seed=3)
        thread = writer(slave, data)
        # Nothing is taken: the thread reads the slack's worth, then waits.
        deadline = time.monotonic() + WAIT
        while source.end < slack:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(0.05)  # a thread that read on would have by now
        assert source.end == slack
        assert take_all(source, record, len(data)) == data
        thread.join(WAIT)
        assert b"".join(record.tail()) == data[-256 * 1024 :]


def test_frames_are_the_protocols_byte_for_byte() -> None:
    with relayed() as (_, source, slave, record):
        a, b = socket.socketpair()
        with a, b:
            link = _relay.Link(source, a.fileno())
            assert not link.active and link.handled == 0
            assert link.activate()
            assert link.handled == source.end == 0
            for size in (1, 200, 255, 256, 4000, 65535):
                data = pattern(size, seed=size)
                os.write(slave, data)
                got = take_all(source, record, size)
                assert got == data
            expected = b""
            received = b""
            b.settimeout(WAIT)
            total = sum((1, 200, 255, 256, 4000, 65535))
            while len(b"".join(decode_frames(received))) < total:
                received += b.recv(1 << 20)
            frames = decode_frames(received)
            assert b"".join(frames) == b"".join(
                pattern(size, seed=size) for size in (1, 200, 255, 256, 4000, 65535)
            )
            for frame in frames:
                expected += EncodedOutput(frame).frames
            assert received == expected, "each frame exactly as EncodedOutput makes it"
            assert link.handled == source.end == total
            link.close()


def test_a_socket_that_takes_part_of_a_frame_deactivates_the_link_and_loses_nothing() -> None:
    with relayed() as (_, source, slave, _):
        a, b = socket.socketpair()
        with a, b:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the smallest buffer
            link = _relay.Link(source, a.fileno())
            assert link.activate()
            data = pattern(500_000, seed=5)
            thread = writer(slave, data)
            # The client reads nothing: the thread deactivates the link once a
            # frame does not fit, and keeps the rest of it.
            deadline = time.monotonic() + WAIT
            while link.active:
                assert time.monotonic() < deadline
                source.take()  # (counted below from the ring instead)
                time.sleep(0.001)
            handled = link.handled
            rest = link.deactivate()
            assert rest, "the frame the socket did not take"
            # The thread goes on reading, and writes nothing more to the client.
            while source.end < len(data):
                source.take()
                assert time.monotonic() < deadline
                time.sleep(0.001)
            thread.join(WAIT)
            b.setblocking(False)
            received = b""
            while True:
                try:
                    chunk = b.recv(1 << 20)
                except BlockingIOError:
                    break
                received += chunk
            got = b"".join(decode_frames(received + rest))
            assert got == data[:handled], "the thread's frames, then the rest: up to handled"
            assert not link.activate(), "the link holds no rest now, but output waits"
            link.close()


def test_activating_fails_while_output_waits_for_python() -> None:
    with relayed() as (_, source, slave, record):
        a, b = socket.socketpair()
        with a, b:
            link = _relay.Link(source, a.fileno())
            os.write(slave, b"waiting")
            deadline = time.monotonic() + WAIT
            while source.end < 7:
                assert time.monotonic() < deadline
                time.sleep(0.001)
            assert not link.activate(), "the client must get 'waiting' from Python first"
            take_all(source, record, 7)
            assert link.activate()
            assert link.handled == 7
            link.close()


def test_a_paused_source_reads_nothing_and_a_closed_one_never_again() -> None:
    with relayed() as (_, source, slave, record):
        source.pause()
        os.write(slave, b"kept")
        master = source  # the master stays readable: the bytes wait in the kernel
        time.sleep(0.05)  # a thread that read it would have by now
        assert source.end == 0
        source.resume()
        assert take_all(source, record, 4) == b"kept"
        del master
        source.close()
        os.write(slave, b"more")
        time.sleep(0.05)
        assert source.end == 4
        assert source.take()[0] == b""


def test_a_hangup_is_told_after_the_last_bytes() -> None:
    relay, source, owner, slave, record = start_relay(64 * 1024)  # the test closes the slave
    try:
        os.write(slave, b"last words")
        os.close(slave)
        got = b""
        deadline = time.monotonic() + WAIT
        while True:
            data, _, hung_up, error, _ = source.take()
            got += data
            if hung_up:
                break
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert got == b"last words" and error == 0
        # Nothing more: a hung-up master is out of the epoll (it would wake the thread for ever).
        assert source.take() == (b"", 0, True, 0, 0)
    finally:
        owner.close()
        record.close()
        relay.close()
    assert source.closed


def test_the_thread_tells_python_through_its_eventfd() -> None:
    with relayed() as (relay, source, slave, _):
        fd = relay.fileno()
        os.write(slave, b"x")
        ready, _, _ = select.select([fd], [], [], WAIT)
        assert ready == [fd]
        sources, links = relay.events()
        assert sources == [source] and links == []
        assert source.take()[0] == b"x"
        # Taken: no event is pending any more.
        assert relay.events() == ([], [])
        ready, _, _ = select.select([fd], [], [], 0)
        assert not ready


def test_output_every_client_got_waits_for_the_delay_unless_it_may_hold_a_query() -> None:
    # A delay no test outlasts: what is told, is told at once.
    with relayed(notify_delay=3600.0) as (relay, source, slave, _):
        fd = relay.fileno()
        a, b = socket.socketpair()
        with a, b:
            link = _relay.Link(source, a.fileno())
            source.only_links = True  # Python: this client is the session's only one
            assert link.activate()
            b.settimeout(WAIT)

            def sent(data: bytes) -> None:
                os.write(slave, data)
                received = b""
                while b"".join(decode_frames(received)) != data:
                    received += b.recv(1 << 16)

            sent(b"typed")  # an echo: the client has it, the event loop hears later
            assert select.select([fd], [], [], 0.05)[0] == [], "the event loop was woken"
            sent(b"\x1b[6n")  # a cursor position query: the event loop answers it now
            assert select.select([fd], [], [], WAIT)[0] == [fd]
            assert relay.events() == ([source], [])
            assert source.take()[0] == b"typed\x1b[6n"
            link.close()


def test_take_says_when_the_thread_read_the_first_byte() -> None:
    with relayed() as (_, source, slave, _):
        before = time.time_ns()
        os.write(slave, b"first")
        wait_for(lambda: source.end == 5, "the thread read it")
        read_by = time.time_ns()
        time.sleep(0.05)  # the event loop takes it late
        os.write(slave, b" second")
        wait_for(lambda: source.end == 12, "the thread read the rest")
        data, _, _, _, read_ns = source.take()
        assert data == b"first second"
        assert before <= read_ns <= read_by, "the first byte's read, not the take's"
        assert source.take()[4] == 0, "nothing taken, no time"


def test_a_link_keeps_its_own_socket_and_closes_it() -> None:
    with relayed() as (_, source, _, _):
        a, b = socket.socketpair()
        link = _relay.Link(source, a.fileno())
        a.close()  # Python's socket is gone: the link's stays open...
        b.settimeout(0.05)
        with pytest.raises(TimeoutError):
            b.recv(1)
        link.close()  # ...until the link closes it
        b.settimeout(WAIT)
        assert b.recv(1) == b""
        b.close()


@contextmanager
def reading(source: _relay.Source) -> Iterator[tuple[_relay.Link, socket.socket]]:
    """A link whose thread reads its client's input (started), and the
    client's end of the socket; closed on the way out."""
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)  # as trio's are (the thread reads with MSG_DONTWAIT anyway)
        link = _relay.Link(source, a.fileno())
        try:
            assert link.start_input() and link.input
            yield link, b
        finally:
            link.close()


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_the_thread_writes_the_keys_of_input_messages_and_hands_back_the_rest() -> None:
    with relayed() as (_, source, slave, _), reading(source) as (link, b):
        keys = [b"l", b"s", b" -l\r", b"x" * 300, b"y" * 70_000]
        b.sendall(b"".join(_frame(codec.encode_body(ev.Input(k))) for k in keys[:4]))
        assert read_exactly(slave, 1 + 1 + 4 + 300) == b"".join(keys[:4])
        assert link.typed and link.input
        # A message larger than the thread holds: Python's, whole.
        big = _frame(codec.encode_body(ev.Input(keys[4])))
        b.sendall(big[:1000])
        wait_for(lambda: link.input_stopped, "stopped at a message larger than its buffer")
        left, unwritten, written = link.stop_input()
        assert left == big[:4] or big.startswith(left), "the start of it, for Python"
        assert unwritten == b"" and written == 306
        # Anything but keys and sizes: handed back whole, with what follows it.
        assert link.start_input()
        detach = _frame(codec.encode_body(ev.Detach()))
        after = _frame(codec.encode_body(ev.Input(b"after")))
        b.sendall(detach + after)
        wait_for(lambda: link.input_stopped, "stopped at the detach")
        left, unwritten, written = link.stop_input()
        assert left == detach + after and unwritten == b"" and written == 0
        # The end of the stream stops it, with nothing to hand back.
        assert link.start_input()
        b.shutdown(socket.SHUT_WR)
        wait_for(lambda: link.input_stopped, "stopped at the end of the stream")
        assert link.stop_input() == (b"", b"", 0)


def test_keys_a_full_terminal_does_not_take_are_handed_back() -> None:
    with relayed() as (_, source, slave, _), reading(source) as (link, b):
        # The program reads nothing (raw mode): the terminal's input buffer fills.
        typed = pattern(100_000, seed=1)
        b.sendall(b"".join(_frame(codec.encode_body(ev.Input(typed[i : i + 4000])))
                           for i in range(0, len(typed), 4000)))  # fmt: skip
        wait_for(lambda: link.input_stopped, "stopped at a full terminal")
        left, unwritten, written = link.stop_input()
        assert unwritten, "the keys of the message the terminal took part of"
        # The terminal has `written` bytes; then `unwritten`; then what `left` holds.
        got = read_exactly(slave, written)
        rest = b"".join(ev_.data for ev_ in decode_inputs(left))
        assert got + unwritten + rest == typed[: len(got) + len(unwritten) + len(rest)]


def read_exactly(fd: int, size: int) -> bytes:
    got = b""
    deadline = time.monotonic() + WAIT
    while len(got) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"only {len(got)} of {size} bytes"
        got += os.read(fd, size - len(got))
    return got


def decode_inputs(data: bytes) -> list[ev.Input]:
    out = []
    at = 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        if at + 4 + size > len(data):
            break
        event = codec.decode_body(data[at + 4 : at + 4 + size], 1 << 20, 64)
        assert isinstance(event, ev.Input)
        out.append(event)
        at += 4 + size
    return out


def _winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def _packed(pairs: list[tuple[str, object]]) -> bytes:
    """A message as some other encoder might pack it: these keys, in this order."""
    return _frame(msgpack.packb(dict(pairs)))


def test_the_thread_puts_window_sizes_in_force_and_says_which_was_last() -> None:
    with relayed() as (_, source, slave, _), reading(source) as (link, b):
        assert link.take_size() is None
        # Every width msgpack writes a size in (fixint, uint8, uint16), the bounds included.
        for rows, cols in [(1, 127), (128, 255), (256, 65535), (65535, 1), (24, 80)]:
            b.sendall(_frame(codec.encode_body(ev.WindowSize(rows, cols))))
            size = (rows, cols)
            wait_for(lambda: _winsize(slave) == size, f"{rows}x{cols}")  # noqa: B023
        assert link.take_size() == (24, 80), "the last one"
        assert link.take_size() is None, "once"
        # Keys after a size go on being written, in order.
        b.sendall(_frame(codec.encode_body(ev.Input(b"k"))))
        assert read_exactly(slave, 1) == b"k"
        # Its keys in another order: the same message.
        b.sendall(_packed([("cols", 100), ("type", "window_size"), ("rows", 2**16 - 2)]))
        wait_for(lambda: _winsize(slave) == (65534, 100), "keys in another order")
        assert link.take_size() == (65534, 100) and link.input
        # A size in a wider integer than msgpack would use (a uint32): the same too.
        b.sendall(_frame(b"\x83\xa4type\xabwindow_size\xa4rows\xce\0\0\0\x05\xa4cols\x50"))
        wait_for(lambda: _winsize(slave) == (5, 80), "a uint32")
        assert link.take_size() == (5, 80) and link.input


@pytest.mark.parametrize(
    "body",
    [
        [("type", "window_size"), ("rows", 0), ("cols", 80)],
        [("type", "window_size"), ("rows", 24), ("cols", 65536)],
        [("type", "window_size"), ("rows", -1), ("cols", 80)],
        [("type", "window_size"), ("rows", 24)],
        [("type", "window_size"), ("rows", 24), ("cols", 80), ("x", 1)],
        [("type", "window_size"), ("rows", 24), ("rows", 25), ("cols", 80)],
        [("type", "window_sizes"), ("rows", 24), ("cols", 80)],
        [("type", "window_size"), ("rows", 24.0), ("cols", 80)],
    ],
    ids=["zero", "too-wide", "negative", "no-cols", "extra-key", "twice", "other-type", "float"],
)
def test_a_window_size_the_thread_cannot_vouch_for_is_handed_back(
    body: list[tuple[str, object]],
) -> None:
    with relayed() as (_, source, slave, _), reading(source) as (link, b):
        before = _winsize(slave)
        if len({k for k, _ in body}) < len(body):  # a dict cannot hold it: pack by hand
            message = _frame(
                bytes([0x80 | len(body)])
                + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in body)
            )
        else:
            message = _packed(body)
        after = _frame(codec.encode_body(ev.Input(b"after")))
        b.sendall(message + after)
        wait_for(lambda: link.input_stopped, "stopped at it")
        left, unwritten, written = link.stop_input()
        assert left == message + after and unwritten == b"" and written == 0
        assert link.take_size() is None and _winsize(slave) == before
