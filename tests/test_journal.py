"""journald's native protocol, received on a real datagram socket standing in for journald's.

What arrives is parsed as journald parses it (tests/support/journal.py):
simple and binary-safe fields, entries too big for a datagram in a sealed
memfd.  A journald that is busy costs entries, counted and reported; one
that is gone costs nothing: the events go to stderr (its stream) instead.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st

from consoled.server import journal
from consoled.server.journal import JournalSocket, stream_is_journal
from tests.support.journal import parse_entry, receive_entry
from tests.support.sink import SinkFactory, sink_logger

#: Bound on any one wait in these tests.
BOUND = 15.0


# --- detection and encoding, without sockets ------------------------------------------------


def test_stream_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    r, w = os.pipe()
    other = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        st = os.fstat(w)
        assert stream_is_journal(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(other, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        for value in ("", ":", "junk", f"{st.st_dev}", f"{st.st_dev}:{st.st_ino}:0",
                      f"{st.st_dev}:{st.st_ino + 1}", f"{st.st_dev + 1}:{st.st_ino}"):  # fmt: skip
            assert not stream_is_journal(w, {"JOURNAL_STREAM": value}), value
        assert not stream_is_journal(w, {})
    finally:
        for fd in (r, w, other):
            os.close(fd)
    assert not stream_is_journal(w, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})  # closed


def test_entry_fields() -> None:
    traceback = "Traceback (most recent call last):\n  ...\nValueError: x\n"
    event = {
        "event": "intake.rejected",
        "level": "warning",
        "session": "web1",
        "count": 3,
        "forced": True,
        "path": None,
        "exception": traceback,
        # Not sent as fields: ours, journald's own, or not valid names.
        "message": "not the MESSAGE",
        "priority": 0,
        "_pid": 1,
        "9lives": "x",
        "bad-key": "x",
        "k" * 65: "x",
        "é": "x",
    }
    raw = journal.entry(event, message='{"event": "intake.rejected"}')
    fields = parse_entry(raw)
    assert fields == {
        "MESSAGE": b'{"event": "intake.rejected"}',
        "PRIORITY": b"4",
        "SYSLOG_IDENTIFIER": b"consoled",
        "EVENT": b"intake.rejected",
        "LEVEL": b"warning",
        "SESSION": b"web1",
        "COUNT": b"3",
        "FORCED": b"true",
        "PATH": b"null",
        "EXCEPTION": traceback.encode(),
    }
    # A value with a newline goes in the binary-safe form.
    value = traceback.encode()
    assert b"EXCEPTION\n" + struct.pack("<Q", len(value)) + value + b"\n" in raw
    assert b"SESSION=web1\n" in raw


@pytest.mark.parametrize(
    ("level", "priority"),
    [("critical", 2), ("error", 3), ("exception", 3), ("warning", 4), ("info", 6),
     ("debug", 7), ("unheard-of", 6), (None, 6)],
)  # fmt: skip
def test_priority_from_level(level: str | None, priority: int) -> None:
    fields = parse_entry(journal.entry({"event": "e", "level": level}, "m"))
    assert fields["PRIORITY"] == str(priority).encode()


field_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(
    lambda k: k.upper() not in {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"}
)


@given(fields=st.dictionaries(field_names, st.text()), message=st.text())
def test_any_text_round_trips(fields: dict[str, str], message: str) -> None:
    parsed = parse_entry(journal.entry(fields, message))
    expected = {k.upper(): v.encode("utf-8", "backslashreplace") for k, v in fields.items()}
    assert parsed == {
        "MESSAGE": message.encode("utf-8", "backslashreplace"),
        "PRIORITY": b"6",
        "SYSLOG_IDENTIFIER": b"consoled",
        **expected,
    }


# --- a sink sending to a socket standing in for journald's ----------------------------------


class FakeJournald:
    """A datagram socket bound where the sink is told journald listens."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: trio.socket.SocketType | None = None

    async def start(self) -> None:
        if os.path.lexists(self.path):
            os.unlink(self.path)
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        await self.sock.bind(self.path)

    def stop(self) -> None:
        """Close the socket and leave its file: what a journald that died leaves."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def receive(self) -> dict[str, bytes]:
        fields, _ = await self.receive_raw()
        return fields

    async def receive_raw(self) -> tuple[dict[str, bytes], bool]:
        assert self.sock is not None
        with trio.fail_after(BOUND):
            received = await receive_entry(self.sock)
        return parse_entry(received.data), received.memfd


@pytest.fixture
async def journald(short_tmp: Path) -> AsyncIterator[FakeJournald]:
    fake = FakeJournald(str(short_tmp / "journal.sock"))
    await fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def stderr_pipe() -> Iterator[tuple[int, int]]:
    """The sink's stderr (where events go when journald cannot take them)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def read_lines(fd: int) -> list[dict[str, Any]]:
    """The JSON lines in a pipe now (the writer is idle: flushed)."""
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    return [json.loads(line) for line in data.splitlines()]


async def flush(sink: Any) -> None:
    assert await trio.to_thread.run_sync(sink.flush, BOUND)


async def test_events_arrive_as_native_entries(
    new_sink: SinkFactory, journald: FakeJournald, stderr_pipe: tuple[int, int]
) -> None:
    r, w = stderr_pipe
    sink = new_sink(w, journal=JournalSocket(journald.path))
    log = sink_logger(sink)
    with structlog.contextvars.bound_contextvars(session="web1"):
        try:
            raise ValueError("first line\nsecond line")
        except ValueError:
            log.exception("session.failed", detail="what=ever")
    fields = await journald.receive()
    assert fields["PRIORITY"] == b"3"
    assert fields["SYSLOG_IDENTIFIER"] == b"consoled"
    assert (fields["EVENT"], fields["SESSION"], fields["DETAIL"]) == (
        b"session.failed",
        b"web1",
        b"what=ever",
    )
    assert fields["EXCEPTION"].startswith(b"Traceback")
    assert fields["EXCEPTION"].endswith(b"ValueError: first line\nsecond line")
    message = json.loads(fields["MESSAGE"])  # the JSON line, for journalctl -o cat
    assert message["event"] == "session.failed"
    assert message["exception"] == fields["EXCEPTION"].decode()
    await flush(sink)
    assert read_lines(r) == []  # each event went once, to the journal only
    assert sink.stats().written == 1


async def test_entry_too_big_for_a_datagram_goes_in_a_sealed_memfd(
    new_sink: SinkFactory, journald: FakeJournald, stderr_pipe: tuple[int, int]
) -> None:
    _, w = stderr_pipe
    sink = new_sink(w, journal=JournalSocket(journald.path))
    log = sink_logger(sink)
    big = "x" * 300_000 + "\n" + "y" * 1000  # over the 208 KiB a datagram may carry
    log.info("big", blob=big)
    log.info("small")
    fields, memfd = await journald.receive_raw()
    assert memfd
    assert fields["BLOB"] == big.encode()  # whole: not truncated
    assert json.loads(fields["MESSAGE"])["blob"] == big
    fields, memfd = await journald.receive_raw()
    assert not memfd and fields["EVENT"] == b"small"


async def test_busy_journald_costs_entries_counted_and_reported(
    new_sink: SinkFactory, journald: FakeJournald, stderr_pipe: tuple[int, int]
) -> None:
    r, w = stderr_pipe
    sink = new_sink(w, journal=JournalSocket(journald.path))
    log = sink_logger(sink)
    count = 2000  # more than journald's socket queue and our send buffer hold
    for i in range(count):
        log.info("flood", i=i)
    await flush(sink)
    sent = sink.stats().written
    assert 0 < sent < count
    assert sink.stats().last_error == "EAGAIN"
    assert read_lines(r) == []  # dropped, not written to stderr instead
    for i in range(sent):
        assert (await journald.receive())["I"] == str(i).encode()
    log.info("after")
    report = await journald.receive()
    assert (report["EVENT"], report["COUNT"], report["ERROR"], report["PRIORITY"]) == (
        b"log.dropped",
        str(count - sent).encode(),
        b"EAGAIN",
        b"4",
    )
    assert (await journald.receive())["EVENT"] == b"after"


async def test_journald_gone_then_back(
    new_sink: SinkFactory, journald: FakeJournald, stderr_pipe: tuple[int, int]
) -> None:
    r, w = stderr_pipe
    sink = new_sink(w, journal=JournalSocket(journald.path))
    log = sink_logger(sink)
    log.info("one")
    assert (await journald.receive())["EVENT"] == b"one"
    journald.stop()
    log.info("two")  # refused: goes to stderr, journald's stream
    await flush(sink)
    (line,) = read_lines(r)
    assert line["event"] == "two"
    await journald.start()  # a new journald, a new socket at the same path
    log.info("three")
    assert (await journald.receive())["EVENT"] == b"three"
    await flush(sink)
    assert read_lines(r) == []
    assert sink.stats().written == 3


# --- configure() in a process whose stderr is, or is not, the journal -----------------------

#: The child: configures logging as ``consoled serve`` does, logs, exits.
CHILD = """
import sys
import structlog
from consoled.server import logconfig

sink = logconfig.configure("json", "info", journal_socket=sys.argv[1])
structlog.get_logger().info("hello", where="child")
assert sink.close(10)
"""


@pytest.mark.parametrize("case", ["journal", "not-the-journal-stream", "no-journald"])
async def test_configure_uses_the_journal_only_when_stderr_is_it(
    case: str, journald: FakeJournald
) -> None:
    r, w = os.pipe()
    env = dict(os.environ)
    st = os.fstat(w)
    other = 1 if case == "not-the-journal-stream" else 0
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + other}"
    if case == "no-journald":
        journald.stop()
    try:
        with trio.fail_after(BOUND):
            result = await trio.run_process(
                [sys.executable, "-c", CHILD, journald.path],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=w,
                check=False,
            )
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            stderr = [json.loads(line) for line in f.read().splitlines()]
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert result.returncode == 0
    if case == "journal":
        assert stderr == []
        fields = await journald.receive()
        assert (fields["EVENT"], fields["WHERE"]) == (b"hello", b"child")
    elif case == "no-journald":
        unavailable, hello = stderr
        assert unavailable["event"] == "log.journal_unavailable"
        assert unavailable["socket"] == journald.path
        assert unavailable["error"] == "Connection refused"
        assert hello["event"] == "hello"
    else:
        assert [e["event"] for e in stderr] == ["hello"]
