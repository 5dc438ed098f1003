"""The log sink with real file descriptors: it never blocks its caller and never raises.

A pipe nobody reads, a pipe whose reader is gone, a file past RLIMIT_FSIZE
(in a child process, where the limit is set), a stderr someone made
non-blocking, events that cannot be rendered: the caller goes on, every
lost event is counted, and the next line written says how many are missing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from consoled.server import logconfig
from consoled.server.logsink import LogSink
from tests.support.sink import SinkFactory, sink_logger

#: Bound on any one wait in these tests.
BOUND = 15.0
#: One page: the smallest pipe buffer, quick to fill.
PIPE_SIZE = 4096
#: A line the test writes into a pipe itself, not an event.
FILLER = b"-" * 63 + b"\n"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def fill(fd: int) -> None:
    """Fill a pipe so that the next write to it blocks (``fd`` is left blocking)."""
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, FILLER)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


class PipeReader:
    """Reads a pipe's lines in a task; events (JSON) and our filler kept apart."""

    def __init__(self, fd: int) -> None:
        self.stream = trio.lowlevel.FdStream(os.dup(fd))
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        buf = b""
        async with self.stream:
            async for chunk in self.stream:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                self.lines += [line.decode() for line in lines if line + b"\n" != FILLER]
                self._changed.set()
                self._changed = trio.Event()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    async def wait_for(self, needle: str) -> None:
        with trio.move_on_after(BOUND):
            while not any(needle in line for line in self.lines):
                await self._changed.wait()
            return
        raise AssertionError(f"{needle!r} not read within {BOUND} s: {self.lines[-5:]}")


async def flush(sink: LogSink) -> None:
    assert await trio.to_thread.run_sync(sink.flush, BOUND)


async def test_unread_pipe_never_blocks_the_caller(
    new_sink: SinkFactory, pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    r, w = pipe
    fill(w)
    sink = new_sink(w, max_lines=100)
    log = sink_logger(sink)
    count = 5000

    def flood() -> None:
        for i in range(count):
            log.info("flood", i=i)

    # Run where a caller that blocked could be abandoned, and bounded.
    with trio.fail_after(BOUND):
        await trio.to_thread.run_sync(flood, abandon_on_cancel=True)
    stats = sink.stats()
    # The writer holds one event, blocked in write(2); 100 are queued.
    assert count - 101 <= stats.dropped <= count - 100
    assert stats.written == stats.failed == stats.errors == 0

    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    await flush(sink)
    log.info("after")
    await reader.wait_for('"after"')
    await flush(sink)  # the writer counts a line once write(2) returned: after the reader has it
    *events, after = reader.events()
    assert after["event"] == "after"
    # Each gap in the flood is reported, with its size, where it is.
    expected, gaps = 0, 0
    for event in events:
        if event["event"] == "log.dropped":
            assert event["level"] == "warning"
            assert "error" not in event  # nothing failed: the queue was full
            expected += event["count"]
            gaps += 1
        else:
            assert event["i"] == expected, event
            expected += 1
    assert expected == count and gaps >= 1
    assert events[-1]["event"] == "log.dropped"  # the last gap: after the last one queued
    stats = sink.stats()
    assert stats.written == len(events) - gaps + 1
    assert stats.dropped == count - stats.written + 1


async def test_a_burst_is_written_together_and_flush_does_not_wait_for_it(
    new_sink: SinkFactory, pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    r, w = pipe
    sink = new_sink(w, batch_delay=3600)
    log = sink_logger(sink)
    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    log.info("first")
    log.info("second")
    await trio.sleep(0.1)
    # The woken writer waits for the rest of the burst (each wake-up costs
    # the event loop the GIL)...
    assert sink.stats().written == 0
    # ...but not when someone waits for the events.
    with trio.fail_after(BOUND):
        await flush(sink)
    await reader.wait_for('"second"')
    assert [e["event"] for e in reader.events()] == ["first", "second"]
    log.info("third")
    with trio.fail_after(BOUND):
        assert await trio.to_thread.run_sync(sink.close, BOUND)
    await reader.wait_for('"third"')


async def test_close_is_bounded_and_writes_the_last_events(
    new_sink: SinkFactory, pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    r, w = pipe
    fill(w)
    sink = new_sink(w)
    log = sink_logger(sink)
    log.info("daemon.stopped")
    start = time.monotonic()
    assert not sink.close(0.3)  # blocked: gives up, the thread stays behind
    assert time.monotonic() - start < 2
    log.info("too.late")  # after close: dropped, and counted
    assert sink.stats().dropped == 1
    # Once the pipe is read the writer finishes: the last event made it out,
    # and the count of those that did not.
    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    assert await trio.to_thread.run_sync(sink.close, BOUND)
    await reader.wait_for("log.dropped")
    stopped, dropped = reader.events()
    assert stopped["event"] == "daemon.stopped"
    assert (dropped["event"], dropped["count"]) == ("log.dropped", 1)


async def test_reader_gone_counts_epipe_and_does_not_spin(new_sink: SinkFactory) -> None:
    r, w = os.pipe()
    os.close(r)
    sink = new_sink(w)
    log = sink_logger(sink)
    for i in range(1000):
        log.info("burst", i=i)  # no BrokenPipeError, no exception at all
    # Steady logging for a second: a writer that tried every event would
    # fail 100 times; one that pauses after a failure, a few times.
    for i in range(100):
        log.info("steady", i=i)
        await trio.sleep(0.01)
    assert sink.close(BOUND)
    stats = sink.stats()
    assert stats.written == 0
    assert stats.failed + stats.dropped == 1100
    assert 1 <= stats.errors <= 12, stats
    assert stats.last_error == "EPIPE"
    os.close(w)


async def test_nonblocking_stderr_is_waited_for_not_lost(
    new_sink: SinkFactory, pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    # Someone set O_NONBLOCK on the file description we share: write(2) says
    # EAGAIN instead of blocking, and the writer must wait, not drop or spin.
    r, w = pipe
    fill(w)
    os.set_blocking(w, False)
    sink = new_sink(w)
    log = sink_logger(sink)
    for i in range(50):
        log.info("wait", i=i)
    assert not await trio.to_thread.run_sync(sink.flush, 0.2)  # waiting, not dropping
    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    await flush(sink)
    await reader.wait_for('"i": 49')
    assert [e["i"] for e in reader.events()] == list(range(50))
    stats = sink.stats()
    assert (stats.written, stats.dropped, stats.failed, stats.errors) == (50, 0, 0, 0)


class Changing:
    """An object whose repr changes after it was logged."""

    def __init__(self) -> None:
        self.state = "as logged"

    def __repr__(self) -> str:
        return f"<{self.state}>"


async def test_the_writer_renders_events_as_they_were_when_logged(
    pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    # The caller only captures an event (its context, time and values); the
    # writer renders it later, in its own thread: rendering on the event
    # loop cost an attach a tenth of its time.
    r, w = pipe
    fill(w)  # the writer blocks on the first event: the second waits, unrendered
    rendered_in: list[int] = []
    render = structlog.processors.JSONRenderer()

    def spy(logger: Any, method_name: str, event_dict: Any) -> Any:
        rendered_in.append(threading.get_ident())
        return render(logger, method_name, event_dict)

    sink = LogSink(w, capture=logconfig.CAPTURE, processors=logconfig.PROCESSORS, renderer=spy)
    try:
        await _renders_as_logged(sink, r, nursery, rendered_in)
    finally:
        sink.close(0.5)


async def _renders_as_logged(
    sink: LogSink, r: int, nursery: trio.Nursery, rendered_in: list[int]
) -> None:
    log = sink_logger(sink)
    thing = Changing()
    log.info("first")
    with structlog.contextvars.bound_contextvars(peer="as logged"):
        before = time.time()
        log.info("second", thing=thing, items=[1, 2])
        after = time.time()
    thing.state = "changed"
    await trio.sleep(0.01)  # wall-clock time passes before the writer renders
    assert threading.get_ident() not in rendered_in
    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    await reader.wait_for('"second"')
    second = reader.events()[1]
    assert (second["thing"], second["items"], second["peer"]) == (
        "<as logged>",
        [1, 2],
        "as logged",
    )
    stamp = datetime.fromisoformat(second["timestamp"]).timestamp()
    assert before - 1e-6 <= stamp <= after + 1e-6
    assert second["timestamp"].endswith("Z")
    assert rendered_in and threading.get_ident() not in rendered_in


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


async def test_unrenderable_events_never_raise(
    new_sink: SinkFactory, pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    r, w = pipe
    sink = new_sink(w)
    log = sink_logger(sink)
    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    circular: list[object] = []
    circular.append(circular)
    log.info("bad.repr", value=Unprintable())
    log.info("bad.circular", value=circular)
    # Even the stand-in cannot be rendered when the bad value is in the context.
    with structlog.contextvars.bound_contextvars(bad=Unprintable()):
        log.info("bad.context")
    log.info("good", session="web1")
    await reader.wait_for('"good"')
    events = reader.events()
    assert [(e["event"], e.get("failed_event"), e.get("error")) for e in events[:2]] == [
        ("log.render_failed", "bad.repr", "RuntimeError"),
        ("log.render_failed", "bad.circular", "ValueError"),
    ]
    assert events[0]["level"] == "error"
    assert events[2]["event"] == "log.dropped" and events[2]["count"] == 1
    assert events[3]["event"] == "good" and events[3]["session"] == "web1"
    assert sink.stats().unrenderable == 3


async def test_console_format_reports_drops_in_its_own_format(
    new_sink: SinkFactory, pipe: tuple[int, int], nursery: trio.Nursery
) -> None:
    r, w = pipe
    fill(w)
    sink = new_sink(w, "console", max_lines=2)
    log = sink_logger(sink)
    for i in range(20):
        log.info("flood", i=i)
    reader = PipeReader(r)
    nursery.start_soon(reader.run)
    await flush(sink)
    log.warning("after")
    await reader.wait_for("after")
    *flooded, report, after = reader.lines
    assert all(re.search(r"\[info\s*\] flood\s+i=\d+$", line) for line in flooded), flooded
    match = re.search(r"\[warning\s*\] log\.dropped\s+count=(\d+)$", report)
    assert match, report
    assert int(match.group(1)) == 20 - len(flooded)
    assert re.search(r"\[warning\s*\] after$", after)


# --- a file past RLIMIT_FSIZE, in a child process ------------------------------------------

#: The child: logs through a sink on its stderr (a file under RLIMIT_FSIZE),
#: prints its sink's stats, waits for the parent to make room, logs again.
CHILD = """
import dataclasses, json, logging, signal, sys
import structlog
from consoled.server.logconfig import make_sink

# CPython ignores SIGXFSZ at start-up: a write past the limit fails with
# EFBIG instead of killing the process.
assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
sink = make_sink(2)
log = structlog.wrap_logger(
    structlog.ReturnLogger(), processors=[sink],
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
)

def report():
    print(json.dumps(dataclasses.asdict(sink.stats())), flush=True)

for i in range(int(sys.argv[1])):
    log.info("filler", i=i)
assert sink.flush(10)
report()
sys.stdin.readline()
log.info("after")
assert sink.close(10)
report()
"""


async def read_json_line(stream: trio.abc.ReceiveStream) -> dict[str, Any]:
    buf = b""
    with trio.fail_after(BOUND):
        while not buf.endswith(b"\n"):
            chunk = await stream.receive_some(4096)
            assert chunk, f"the child closed stdout after {buf!r}"
            buf += chunk
    result: dict[str, Any] = json.loads(buf)
    return result


async def test_file_too_large_counts_efbig_and_resumes(tmp_path: Path) -> None:
    limit, count = 4096, 200
    path = tmp_path / "consoled.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def set_limit() -> None:  # in the child, between fork and exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=fd,
            preexec_fn=set_limit,
        )
    finally:
        os.close(fd)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        before = await read_json_line(proc.stdout)
        assert os.path.getsize(path) == limit
        *lines, cut = path.read_bytes().split(b"\n")
        assert len(cut) < 200  # a line cut by the limit (unless one ended right there)
        assert [json.loads(line)["i"] for line in lines] == list(range(before["written"]))
        assert before["failed"] == count - before["written"] > 0
        assert before["last_error"] == "EFBIG"
        assert before["errors"] <= 3  # a failure drops what is queued, then pauses

        os.truncate(path, 0)  # space again (an O_APPEND file starts over at 0)
        await proc.stdin.send_all(b"go\n")
        after = await read_json_line(proc.stdout)
        with trio.fail_after(BOUND):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                await stream.aclose()
    # The cut line is ended first, then the report, then the new event.
    text = path.read_text()
    if cut:
        assert text.startswith("\n")
        text = text[1:]
    report, last, end = text.split("\n")
    assert end == ""
    assert json.loads(report) | {"timestamp": None} == {
        "event": "log.dropped",
        "count": count - before["written"],
        "error": "EFBIG",
        "level": "warning",
        "timestamp": None,
    }
    assert json.loads(last)["event"] == "after"
    assert after == before | {"written": before["written"] + 1}
