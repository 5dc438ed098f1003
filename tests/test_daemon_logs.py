"""A real daemon whose own stderr misbehaves keeps holding and draining terminals.

The daemon holds every container's terminal: if its logging kills or
freezes it, every container hangs up.  Each test gives ``consoled serve`` a
broken stderr (a pipe whose reader is gone, a file under ``RLIMIT_FSIZE``
standing in for a full disk, a pipe nobody reads) and checks that it stays
up and keeps serving: ``consoled ls`` answers and a session whose master
came over a console socket, as from a runtime, keeps being drained.  Also:
stderr that is the journal gets journald's native protocol, and a crash
leaves a ``daemon.crashed`` event, not a raw traceback.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from consoled.protocol import events as ev
from tests.conftest import DaemonFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess

#: Bound on any one wait in these tests.
BOUND = 30.0
#: Bytes written to a held terminal's slave to show the daemon drains it:
#: far more than a pty buffers (a few KiB), so the writes finish only if the
#: daemon reads.
FLOOD = 1024 * 1024
#: Failing requests that each make the daemon log one ``request.failed``
#: line (about 150 bytes): more than a 64 KiB pipe holds plus the daemon's
#: log queue (4,096 lines), so some are dropped.
MANY = 6000


async def failing_requests(daemon: DaemonProcess, count: int, tag: str) -> None:
    """Make the daemon log ``count`` events; every request must be answered."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        with trio.fail_after(BOUND):
            for i in range(count):
                reply = await client.request(ev.Resize(f"{tag}-{i}", 24, 80))
                assert isinstance(reply, ev.Error), reply
    finally:
        await client.aclose()


async def assert_serving(daemon: DaemonProcess, name: str) -> None:
    """``consoled ls`` answers, and a terminal handed over as runc does is drained."""
    result = await cli(daemon, "ls", "--json")
    assert result.returncode == 0, result.stderr
    client = await AsyncClient.connect(daemon.control_socket)
    master, slave = os.openpty()
    try:
        path = await client.create_socket(name)
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            with trio.fail_after(BOUND):
                await sock.connect(path)
                rights = array.array("i", [master])
                await sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        os.close(master)
        master = -1
        os.set_blocking(slave, False)
        data = memoryview(b"x" * FLOOD + f"end-of-{name}".encode())
        with trio.fail_after(BOUND):
            while data:
                try:
                    data = data[os.write(slave, data) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(slave)
        await wait_output(daemon.control_socket, name, f"end-of-{name}".encode(), BOUND)
        assert (await client.session(name)).state is ev.SessionState.RUNNING
    finally:
        await client.aclose()
        if master >= 0:
            os.close(master)
        trio.lowlevel.notify_closing(slave)
        os.close(slave)


async def wait_until(check: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    """Poll ``check`` until it holds, for a file, which announces nothing."""
    with trio.move_on_after(timeout):
        while True:
            if check():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def unknown(name: str) -> str:
    """The ``error`` of the ``request.failed`` event for a session that does not exist."""
    return f"no session named {name!r}"


def file_events(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a log file (a line cut short by the limit is left out)."""
    text = path.read_text(errors="replace")
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


async def test_stderr_reader_gone(daemon_factory: DaemonFactory) -> None:
    # Was: BrokenPipeError at daemon.ready, exit 1.
    daemon = await daemon_factory(stderr="closed")
    await failing_requests(daemon, 100, "gone")
    await assert_serving(daemon, "gone")
    assert await daemon.stop() == 0


async def test_stderr_file_too_large_then_space_again(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    limit = 8192
    path = tmp_path / "consoled.log"
    daemon = await daemon_factory(stderr=path, fsize=limit)
    # Was: EFBIG raised out of the log call, the daemon died.
    await failing_requests(daemon, 200, "big")
    assert os.path.getsize(path) == limit
    logged = [e for e in file_events(path) if e["event"] == "request.failed"]
    assert 0 < len(logged) < 200
    await assert_serving(daemon, "big")

    # Space again (the file is appended to, so it starts over at 0 bytes):
    # the next line is preceded by one that says how many were lost.
    os.truncate(path, 0)
    await failing_requests(daemon, 1, "after")

    await wait_until(
        lambda: any(e.get("error") == unknown("after-0") for e in file_events(path)),
        "the event logged after the truncation is in the file",
    )
    events = file_events(path)
    dropped, after = events[0], events[-1]
    assert dropped["event"] == "log.dropped" and dropped["level"] == "warning"
    assert dropped["error"] == "EFBIG"
    assert after["error"] == unknown("after-0")
    # Every request.failed of the 200 was written before the limit, or
    # counted as lost, or (queued while the writer waited to try again)
    # written now.
    late = [e for e in events if e.get("error", "").startswith("no session named 'big-")]
    assert dropped["count"] >= 200 - len(logged) - len(late) > 0
    assert await daemon.stop() == 0


async def test_stderr_nobody_reads(daemon_factory: DaemonFactory, nursery: trio.Nursery) -> None:
    daemon = await daemon_factory(stderr="unread")
    # Was: after about 400 events the event loop blocked in write(2) for good.
    await failing_requests(daemon, MANY, "unread")
    await assert_serving(daemon, "unread")

    # A reader at last: what was queued comes out, then a line saying how
    # many were dropped, then what was logged after.  An event logged before
    # the queue has room again is dropped too (and counted): log markers
    # until one comes out.
    await daemon.read_stderr(nursery)
    marker: dict[str, Any] | None = None
    with trio.fail_after(BOUND):
        for tries in itertools.count(1):
            await failing_requests(daemon, 1, f"marker{tries}")
            with trio.move_on_after(0.5):
                error = unknown(f"marker{tries}-0")
                marker = await daemon.wait_event("request.failed", BOUND, error=error)
            if marker is not None:
                break
    assert marker is not None
    before_marker = daemon.events[: daemon.events.index(marker)]
    assert [e["event"] for e in before_marker[:2]] == ["daemon.starting", "daemon.ready"]
    flood_error = re.compile(re.escape(unknown("unread-@")).replace("@", r"(\d+)"))
    matches = [flood_error.fullmatch(e.get("error", "")) for e in before_marker]
    flood = [int(m.group(1)) for m in matches if m]
    assert flood == sorted(set(flood))  # in order, none twice
    dropped = sum(e["count"] for e in before_marker if e["event"] == "log.dropped")
    missing = MANY - len(flood)
    assert missing > 0
    # Every missing request.failed was counted; so were the few events of
    # assert_serving (session created, master received, running...) and the
    # markers that came too early.
    assert missing <= dropped <= missing + 10 + tries
    assert await daemon.stop() == 0
    await daemon.wait_event("daemon.stopped", timeout=BOUND)


async def test_stderr_is_the_journal(daemon_factory: DaemonFactory) -> None:
    daemon = await daemon_factory(journal=True)
    ready = await daemon.wait_event("daemon.ready")
    (entry,) = [e for e in daemon.entries if e.get("EVENT") == b"daemon.ready"]
    assert json.loads(entry["MESSAGE"]) == ready
    assert entry["PRIORITY"] == b"6"
    assert entry["SYSLOG_IDENTIFIER"] == b"consoled"
    assert entry["PID"] == str(daemon.pid).encode()
    assert entry["LEVEL"] == b"info"

    await failing_requests(daemon, 1, "journal")
    await daemon.wait_event("request.failed")
    (entry,) = [e for e in daemon.entries if e.get("EVENT") == b"request.failed"]
    assert entry["REQUEST"] == b"resize"
    assert entry["ERROR"] == unknown("journal-0").encode()
    assert entry["CLIENT"].isdigit()

    await assert_serving(daemon, "journal")
    assert await daemon.stop() == 0
    await daemon.wait_event("daemon.stopped", timeout=BOUND)
    (entry,) = [e for e in daemon.entries if e.get("EVENT") == b"daemon.stopped"]
    # Nothing went to stderr, the journal's stream: each event went once.
    assert daemon.raw_stderr == []


async def test_crash_leaves_a_crashed_event(short_tmp: Path) -> None:
    # A state directory whose lock file is a directory: opening it raises
    # IsADirectoryError out of trio.run, a bug the daemon does not expect.
    state_dir = short_tmp / "s"
    (state_dir / "lock").mkdir(parents=True, mode=0o700)
    state_dir.chmod(0o700)
    with trio.fail_after(BOUND):
        result = await trio.run_process(
            [sys.executable, "-m", "consoled", "serve", "--state-dir", str(state_dir)],
            stdin=subprocess.DEVNULL,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    # Was: a raw traceback.  Now every line is an event.
    events = [json.loads(line) for line in result.stderr.decode().splitlines()]
    crashed = events[-1]
    assert crashed["event"] == "daemon.crashed" and crashed["level"] == "critical"
    assert "IsADirectoryError" in crashed["exception"]
    assert "Traceback" in crashed["exception"]
