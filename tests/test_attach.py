"""``consoled attach`` and ``consoled resize`` against real runc containers.

Each client is ``python -m consoled attach`` under a real pseudo-terminal
(:class:`PtyProcess`), so raw mode, SIGWINCH, detach keys and the terminal
modes left behind are the real thing.  The container side is busybox ``sh``
on the daemon's pty.  Commands typed into it print computed values
(``echo m-$((6*7))`` prints ``m-42``) so that the container's echo of the
command line never matches what a test waits for.

Busybox ash may write cursor position queries (``ESC[6n``) that nobody
answers; no expectation depends on their absence.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import BundleFactory, DaemonFactory, Spawn
from tests.support.cli import cli
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.ptyproc import EXIT_TIMEOUT, PtyProcess, is_raw
from tests.support.runtime import Runtime, new_container_id

DETACH = b"\x10\x11"  # ctrl-p ctrl-q
PROMPT = b"# "


# --- helpers ------------------------------------------------------------------------------


def fresh_termios() -> list[object]:
    """The modes of a new pty: what every PtyProcess terminal starts with."""
    master, slave = os.openpty()
    try:
        return termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)


class Containers:
    """Runs busybox containers on consoled console sockets."""

    def __init__(self, runc: Runtime, bundle: BundleFactory) -> None:
        self.runc = runc
        self.bundle = bundle

    async def start(self, daemon: DaemonProcess, args: Sequence[str] = ("sh",)) -> str:
        """Run a container on a console socket from ``daemon``; returns its session name."""
        cid = new_container_id("att")
        client = await AsyncClient.connect(daemon.control_socket)
        try:
            path = await client.create_socket(cid)
        finally:
            await client.aclose()
        await self.runc.run(cid, self.bundle(list(args)), path)
        await daemon.wait_event("session.running", session=cid)
        return cid

    async def status(self, cid: str) -> object:
        return (await self.runc.state(cid))["status"]


@pytest.fixture
def containers(runc: Runtime, bundle: BundleFactory) -> Containers:
    return Containers(runc, bundle)


async def session_info(daemon: DaemonProcess, cid: str) -> ev.SessionInfo:
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        return await client.session(cid)
    finally:
        await client.aclose()


def typed(proc: PtyProcess, line: str) -> None:
    """Type a command line and Enter (a raw terminal sends CR)."""
    proc.write(line.encode() + b"\r")


async def run_in(proc: PtyProcess, command: str, result: bytes | re.Pattern[bytes]) -> bytes:
    typed(proc, command)
    return await proc.expect(result)


async def stty_size(proc: PtyProcess) -> tuple[int, int]:
    """The window size the program inside sees."""
    text = await run_in(proc, 'echo "size=$(stty size)."', re.compile(rb"size=(\d+) (\d+)\."))
    match = re.search(rb"size=(\d+) (\d+)\.", text)
    assert match is not None
    return int(match.group(1)), int(match.group(2))


async def wait_exit(proc: PtyProcess) -> int:
    return await proc.wait(EXIT_TIMEOUT)


# --- typing, replay ------------------------------------------------------------------------


async def test_type_command_see_output_and_attach_start_time(
    daemon: DaemonProcess, containers: Containers, attach: Spawn
) -> None:
    cid = await containers.start(daemon, ["sh", "-c", "echo early-$((1+1)); exec sh"])
    await wait_output(daemon.control_socket, cid, b"early-2")
    began = time.monotonic()
    proc = await attach(daemon, cid, wait=False)
    await proc.expect(re.compile(rb"(?=.)", re.DOTALL))  # the first replayed byte, not consumed
    elapsed = time.monotonic() - began
    print(f"\nattach start (spawn to first replayed byte): {elapsed * 1000:.0f} ms")
    await proc.expect(b"early-2")
    assert is_raw(proc)
    await run_in(proc, "echo typed-$((6*7))", b"typed-42")

    # Without replay, the old output is not shown, and typing works the same.
    quiet = await attach(daemon, cid, "--no-replay")
    await run_in(quiet, "echo second-$((6*7))", b"second-42")
    assert b"early-2" not in quiet.output


# --- window size ---------------------------------------------------------------------------


async def test_resize_reaches_the_program_inside(
    daemon_factory: DaemonFactory,
    containers: Containers,
    out_dir: Path,
    attach: Spawn,
) -> None:
    daemon = await daemon_factory("--log-level", "debug")  # for session.resized
    cid = await containers.start(daemon)
    proc = await attach(daemon, cid, rows=24, cols=80)
    await proc.expect(PROMPT)
    assert await stty_size(proc) == (24, 80)

    # The client's terminal changes size: SIGWINCH to the client, then to the shell.
    proc.set_size(33, 101)
    await daemon.wait_event("session.resized", rows=33, cols=101)
    assert await stty_size(proc) == (33, 101)

    # `consoled resize`, while the shell waits for a file from us: nothing is typed
    # after the resize (under `latest`, a keystroke would bring the client's size back).
    typed(
        proc,
        "echo ready-$((1+1)); while [ ! -e /out/go ]; do sleep 0.05; done; "
        'echo "size=$(stty size)."',
    )
    await proc.expect(b"ready-2")
    result = await cli(daemon, "resize", cid, "40", "120")
    assert result.returncode == 0, result.stderr
    (out_dir / "go").touch()
    await proc.expect(b"size=40 120.")

    # Out-of-range sizes are refused with a message that says what is allowed.
    for rows, cols, bad in (("0", "80", "0"), ("24", "70000", "70000")):
        result = await cli(daemon, "resize", cid, rows, cols)
        assert result.returncode == 2
        assert f"must be between 1 and 65535, got {bad}".encode() in result.stderr
        assert b"Traceback" not in result.stderr
    control = await AsyncClient.connect(daemon.control_socket)
    try:
        for rows_n, cols_n, name in ((0, 80, "rows"), (24, 70000, "cols")):
            reply = await control.request(ev.Resize(cid, rows_n, cols_n))
            assert isinstance(reply, ev.Error), reply
            assert reply.code is ErrorCode.INVALID_SIZE
            assert name in reply.message and "65535" in reply.message
    finally:
        await control.aclose()
    info = await session_info(daemon, cid)
    assert (info.rows, info.cols) == (40, 120)  # unchanged by the refusals
    # An attached client's out-of-range size is refused too, and it stays attached.
    streamer = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await streamer.request(ev.Attach(cid, replay=0))
        assert isinstance(reply, ev.Attached), reply
        await streamer.send(ev.WindowSize(70000, 80))
        while not isinstance(event := await streamer.receive(), ev.Error):
            assert isinstance(event, ev.Output), event
        assert event.code is ErrorCode.INVALID_SIZE
    finally:
        await streamer.aclose()


# --- detach keys ---------------------------------------------------------------------------

#: Shows what reached the shell: one line read in canonical mode, as hex.
READ_HEX = (
    "stty -ixon; echo ready-$((1+1)); read -r x; "
    'echo "hex-$(printf %s "$x" | od -An -tx1 | tr -d \' \')"'
)


def reattach_hint(cid: str, *args: str) -> re.Pattern[bytes]:
    """The line a detach ends with: how to come back, with the same detach keys."""
    command = " ".join(("consoled attach", *args, cid))
    return re.compile(
        rf"consoled: detached from {re.escape(cid)}; reattach with: {re.escape(command)}"
        rf"\r\n".encode()
    )


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        pytest.param((), DETACH, id="default"),
        pytest.param(("--detach-keys", "ctrl-a,d"), b"\x01d", id="ctrl-a,d"),
        pytest.param(("--detach-keys", "ctrl-\\,ctrl-x"), b"\x1c\x18", id="ctrl-backslash"),
    ],
)
async def test_detach_keeps_the_container_and_reattach_works(
    daemon: DaemonProcess,
    containers: Containers,
    attach: Spawn,
    args: tuple[str, ...],
    keys: bytes,
) -> None:
    cid = await containers.start(daemon)
    proc = await attach(daemon, cid, *args)
    await proc.expect(PROMPT)
    await run_in(proc, "echo before-$((2+2))", b"before-4")
    proc.write(keys)
    assert await wait_exit(proc) == 0
    # Was: the hint named no keys, and `consoled attach ID` then detached with others.
    hint = (*args[:1], shlex.quote(args[1])) if args else ()
    tail = await proc.expect(reattach_hint(cid, *hint))
    assert tail.count(b"consoled:") == 1, tail  # one line, and it says how to come back
    await daemon.wait_event("client.detached", session=cid, reason="detached")

    assert await containers.status(cid) == "running"
    info = await session_info(daemon, cid)
    assert info.state is ev.SessionState.RUNNING and info.clients == 0

    again = await attach(daemon, cid, *args)
    await again.expect(b"before-4")  # replayed
    await run_in(again, "echo back-$((2+3))", b"back-5")


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        pytest.param((), b"\x10", id="default"),
        pytest.param(("--detach-keys", "ctrl-a,d"), b"\x01", id="ctrl-a,d"),
    ],
)
async def test_detach_prefix_is_passed_on(
    daemon: DaemonProcess,
    containers: Containers,
    attach: Spawn,
    args: tuple[str, ...],
    prefix: bytes,
) -> None:
    cid = await containers.start(daemon)
    proc = await attach(daemon, cid, *args)
    await proc.expect(PROMPT)
    typed(proc, READ_HEX)
    await proc.expect(b"ready-2")  # `read` runs, on a canonical terminal that echoes ^X
    caret = b"^" + bytes([prefix[0] + 64])
    # The first key of the sequence alone: held for the short wait, then sent on
    # though nothing follows it (the container's terminal echoes it).
    sent = time.monotonic()
    proc.write(prefix)
    await proc.expect(caret)
    # Held back first (0.5 s by default): a lower bound only, which load cannot break.
    assert time.monotonic() - sent >= 0.4
    # The first key, then one that is not the second: both go through.
    proc.write(prefix + b"x")
    await proc.expect(caret + b"x")
    proc.write(b"\r")
    await proc.expect(f"hex-{prefix.hex()}{prefix.hex()}78\r\n".encode())
    assert proc.proc.poll() is None
    await run_in(proc, "echo still-$((2*2))", b"still-4")


async def test_empty_detach_keys_disable_detaching(
    daemon: DaemonProcess, containers: Containers, attach: Spawn
) -> None:
    cid = await containers.start(daemon)
    proc = await attach(daemon, cid, "--detach-keys", "")
    await proc.expect(PROMPT)
    typed(proc, READ_HEX)
    await proc.expect(b"ready-2")
    proc.write(DETACH + b"z\r")
    await proc.expect(b"hex-10117a\r\n")
    assert proc.proc.poll() is None
    await run_in(proc, "echo still-$((2*2))", b"still-4")


async def test_bad_detach_keys_are_a_usage_error(daemon: DaemonProcess) -> None:
    for command in (("attach",), ("exec",)):
        result = await cli(daemon, *command, "--detach-keys", "ctrl-1", "nosuch", "sh")
        assert result.returncode == 2
        err = result.stderr.decode()
        assert "invalid detach key 'ctrl-1'" in err, err
        # Was the top-level usage: the command's, and which option is wrong.
        assert err.startswith(f"usage: consoled {command[0]} "), err
        assert f"consoled {command[0]}: error: argument --detach-keys:" in err, err
        assert "Traceback" not in err


# --- ways out ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "way", ["detach", "exit", "daemon-stop", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1"]
)
async def test_terminal_modes_restored_on_every_way_out(
    daemon: DaemonProcess, containers: Containers, attach: Spawn, way: str
) -> None:
    cid = await containers.start(daemon)
    before = fresh_termios()
    proc = await attach(daemon, cid)
    await proc.expect(PROMPT)
    assert proc.termios() != before  # raw while attached
    if way == "detach":
        proc.write(DETACH)
        expected_rc, line = 0, reattach_hint(cid)
    elif way == "exit":
        typed(proc, "exit 3")  # the shell's status is attach's
        expected_rc, line = 3, None  # and nothing said, as docker
    elif way == "daemon-stop":
        assert await daemon.stop() == 0
        expected_rc = 69  # EX_UNAVAILABLE: the daemon stopped
        line = re.compile(rb"consoled: the consoled daemon stopped; this attach has ended\r\n")
    else:
        signum = signal.Signals[way]
        proc.proc.send_signal(signum)
        expected_rc = 128 + signum
        line = re.compile(
            rf"consoled: interrupted by {way}; session {re.escape(cid)} keeps running\r\n".encode()
        )
    assert await wait_exit(proc) == expected_rc
    if line is None:
        assert proc.termios() == before
        await proc.wait_eof()
        assert b"consoled:" not in proc.output, bytes(proc.output)
    else:
        tail = await proc.expect(line)
        assert tail.count(b"consoled:") == 1, tail
        assert proc.termios() == before
    if way.startswith("SIG") or way == "detach":
        await daemon.wait_event("client.detached", session=cid)
        assert (await session_info(daemon, cid)).state is ev.SessionState.RUNNING


# --- several clients -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "both"),
    [("latest", (30, 70)), ("smallest", (24, 70)), ("largest", (30, 80))],
)
async def test_two_clients_see_output_and_size_follows_policy(
    daemon_factory: DaemonFactory,
    containers: Containers,
    attach: Spawn,
    policy: str,
    both: tuple[int, int],
) -> None:
    daemon = await daemon_factory("--size-policy", policy)
    cid = await containers.start(daemon)
    first = await attach(daemon, cid, rows=24, cols=80)
    await first.expect(PROMPT)
    second = await attach(daemon, cid, rows=30, cols=70)  # attached once raw
    info = await session_info(daemon, cid)
    assert (info.clients, info.rows, info.cols) == (2, *both)

    await run_in(second, "echo both-$((2*3))", b"both-6")
    await first.expect(b"both-6")
    assert await stty_size(second) == both
    await first.expect(b"size=%d %d." % both)

    # When a client leaves, the size is recomputed from those that remain.
    second.write(DETACH)
    assert await wait_exit(second) == 0
    await daemon.wait_event("client.detached", session=cid)
    info = await session_info(daemon, cid)
    assert (info.clients, info.rows, info.cols) == (1, 24, 80)
    assert await stty_size(first) == (24, 80)


async def test_read_only_client_sends_nothing_and_its_size_does_not_count(
    daemon: DaemonProcess, containers: Containers, attach: Spawn
) -> None:
    cid = await containers.start(daemon)
    writer = await attach(daemon, cid, rows=24, cols=80)
    await writer.expect(PROMPT)
    # Under `latest`, a read-write client attaching last would impose its size.
    reader = await attach(daemon, cid, "--read-only", rows=50, cols=150)
    info = await session_info(daemon, cid)
    assert (info.clients, info.rows, info.cols) == (2, 24, 80)

    typed(reader, "echo ro-marker-$((5*5))")
    # Was silent: one line says the keys went nowhere, once.
    notice = b"consoled: this attach is read-only; what you type is not sent"
    await reader.expect(notice)
    typed(reader, "echo ro-again-$((5*5))")
    reader.set_size(60, 200)
    # A protocol client too: the daemon's `read_only` error proves its input was
    # taken and dropped before the read-write client's markers below.
    proto = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await proto.request(ev.Attach(cid, read_only=True, replay=0, rows=55, cols=155))
        assert isinstance(reply, ev.Attached), reply
        await proto.send(ev.Input(b"echo proto-marker-$((5*5))\r"))
        await proto.send(ev.WindowSize(66, 166))
        while not isinstance(event := await proto.receive(), ev.Error):
            assert isinstance(event, ev.Output), event
        assert event.code is ErrorCode.READ_ONLY
        # Two round trips through the writer: by then the read-only attach process
        # has long read its keys and its SIGWINCH.
        for n in (1, 2):
            await run_in(writer, f"echo rw-{n}-$((3*3))", f"rw-{n}-9".encode())
            await reader.expect(f"rw-{n}-9".encode())  # a read-only client sees everything
        out, _ = await proto.read_output_until(b"rw-2-9")
        assert b"rw-2-9" in out
    finally:
        await proto.aclose()
    for seen in (writer.output, reader.output):
        assert b"ro-marker" not in seen
        assert b"ro-again" not in seen
        assert b"proto-marker" not in seen
    assert reader.output.count(notice) == 1
    assert reader.proc.poll() is None  # still attached
    info = await session_info(daemon, cid)
    assert (info.rows, info.cols) == (24, 80)
    assert await stty_size(writer) == (24, 80)


# --- a client that stops reading -----------------------------------------------------------

FLOOD = 20 * 1024 * 1024
#: Script prefix: the container's busy processes yield the CPU to the clients under test.
NICE = "renice -n 19 -p $$ >/dev/null; "


async def test_stalled_client_is_lagged_and_costs_nobody_else(
    daemon_factory: DaemonFactory, containers: Containers, tmp_path: Path
) -> None:
    # The container writes as fast as the daemon reads: a reader must keep within
    # its queue of that pace.  16 MiB, and a container that yields the CPU to the
    # clients (nice), leave room on a busy machine.
    daemon = await daemon_factory("--client-queue", "16M")
    flood = f"read go; head -c {FLOOD} /dev/zero | tr '\\0' x; echo; echo end-$((40+2))"
    cid = await containers.start(daemon, ["sh", "-c", NICE + flood])
    argv = [sys.executable, "-m", "consoled", "attach", "--no-tty", cid]
    procs: list[trio.Process] = []
    never_reads = await AsyncClient.connect(daemon.control_socket)
    try:
        # `attach > file`: keeps up, as a client writing to a terminal would.
        # (Their stdin stays open: at its end they would type ctrl-d, and `read go`
        # would return before everyone is attached.)
        with (tmp_path / "fast.out").open("wb") as fast_out:
            fast = await trio.lowlevel.open_process(
                argv, env=daemon.env(), stdin=subprocess.PIPE, stdout=fast_out,
                stderr=subprocess.PIPE,
            )  # fmt: skip
        procs.append(fast)
        # `attach | something that never reads`: the attach process stalls on its stdout.
        slow = await trio.lowlevel.open_process(
            argv, env=daemon.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(slow)
        # And a protocol client that never reads at all (it only types `go`).
        reply = await never_reads.request(ev.Attach(cid, replay=0))
        assert isinstance(reply, ev.Attached), reply
        await daemon.wait_event("client.attached", session=cid, count=3)
        began = time.monotonic()
        await never_reads.send(ev.Input(b"go\r"))

        await daemon.wait_event("session.exited", session=cid, timeout=60)
        print(f"\n{FLOOD} bytes written by the container in {time.monotonic() - began:.1f} s")
        assert await containers.status(cid) == "stopped"
        await daemon.wait_event("client.lagged", count=2)
        fast_err, slow_out, slow_err = bytearray(), bytearray(), bytearray()
        assert fast.stderr is not None and slow.stdout is not None and slow.stderr is not None

        async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
            async for chunk in stream:
                into += chunk

        # Read the slow client only now: it stopped in the middle, and says it lagged.
        with trio.fail_after(30):
            async with trio.open_nursery() as readers:
                readers.start_soon(drain, fast.stderr, fast_err)
                readers.start_soon(drain, slow.stdout, slow_out)
                readers.start_soon(drain, slow.stderr, slow_err)
            assert await fast.wait() == 0, fast_err
            assert await slow.wait() == 75, slow_err  # EX_TEMPFAIL: lagged, attach again
        everything = (tmp_path / "fast.out").read_bytes()
        assert b"\x1b[2J" not in everything  # to a file: the raw bytes, no drawn screen
        assert everything.count(b"x") == FLOOD
        assert everything.endswith(b"end-42\r\n")
        assert fast_err == b"", fast_err  # ended with the session: nothing to say

        assert 0 < slow_out.count(b"x") < FLOOD
        assert b"end-42" not in slow_out
        # (A blank line first: its stdout stopped mid-line, and on a terminal the two share.)
        lines = [line for line in slow_err.decode().splitlines() if line]
        assert len(lines) == 1, lines
        assert "fell behind the output (lagged)" in lines[0]
        assert f"consoled attach {cid}" in lines[0]
    finally:
        with trio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    with trio.move_on_after(EXIT_TIMEOUT):
                        await proc.wait()
                if proc.stdin is not None:
                    await proc.stdin.aclose()
            await never_reads.aclose()


# --- replay --------------------------------------------------------------------------------

#: A busy loop, niced so that it does not starve the clients under test.
COUNTER = ["sh", "-c", NICE + "i=0; while :; do echo $i; i=$((i+1)); done"]


def numbers(out: bytes) -> list[int]:
    """The complete lines of ``out`` as numbers (the first and last may be cut off)."""
    lines = out.split(b"\n")[1:-1]
    return [int(line.rstrip(b"\r")) for line in lines]


def assert_contiguous(values: list[int]) -> None:
    for prev, cur in itertools.pairwise(values):
        assert cur == prev + 1, f"{prev} then {cur}"


async def test_replay_then_live_output_is_contiguous(
    daemon_factory: DaemonFactory, containers: Containers, attach: Spawn
) -> None:
    daemon = await daemon_factory("--scrollback", "64K")
    cid = await containers.start(daemon, COUNTER)
    try:
        # Mid-stream: past 10000 lines, some 58 KB; the counter may be far ahead already.
        await wait_output(daemon.control_socket, cid, re.compile(rb"\n[1-9]\d{4}\r\n"))

        # A client whose replay boundary is known: `attached.replay` bytes, then live.
        proto = await AsyncClient.connect(daemon.control_socket)
        try:
            reply = await proto.request(ev.Attach(cid))  # the whole scrollback
            assert isinstance(reply, ev.Attached), reply
            assert 16 * 1024 < reply.replay <= 64 * 1024
            out = bytearray()
            with trio.fail_after(30):
                while len(out) < reply.replay + 128 * 1024:
                    event = await proto.receive()
                    assert isinstance(event, ev.Output), event
                    out += event.data
        finally:
            await proto.aclose()
        replayed = numbers(bytes(out[: reply.replay]))
        both = numbers(bytes(out))
        assert len(replayed) > 1000 and len(both) > len(replayed) + 10000
        assert_contiguous(both)

        # The command-line client, under a pty, replaying the last 16K.
        proc = await attach(daemon, cid, "--replay", "16K", wait=False)
        first = await proc.expect(re.compile(rb"\n(\d+)\r\n"))
        assert len(first) <= 16 * 1024
        start = int(first.split(b"\n")[-2])
        await proc.expect(b"\n%d\r\n" % (start + 40000))
        values = numbers(bytes(proc.output))
        assert values[0] == start and len(values) > 40000
        assert_contiguous(values)
    finally:
        await containers.runc.kill(cid)  # stop the counter's busy loop now


# --- pipes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags", [pytest.param(("--no-tty",), id="no-tty"), pytest.param((), id="auto")]
)
async def test_pipe_mode(
    daemon: DaemonProcess, containers: Containers, flags: tuple[str, ...]
) -> None:
    cid = await containers.start(daemon)
    # printf 'echo piped-$((6*7))\nexit\n' | consoled attach [--no-tty] SESSION
    result = await cli(daemon, "attach", *flags, cid, stdin=b"echo piped-$((6*7))\nexit\n")
    assert result.returncode == 0, result.stderr
    assert b"piped-42\r\n" in result.stdout
    assert result.stderr == b"", result.stderr  # ended with the session: nothing to say


async def test_pipe_mode_ends_when_stdin_does(
    daemon: DaemonProcess, containers: Containers
) -> None:
    # Was: `printf 'uptime\n' | consoled attach --no-tty web1` never ended.  At the end of
    # its input it types ctrl-d, as at a prompt: the shell exits, and so does the attach.
    cid = await containers.start(daemon)
    # At its prompt, as in a script that attaches to a running container.  A ctrl-d
    # that reaches the terminal before the shell has switched it to raw mode (while
    # it starts up) becomes a NUL there: the kernel's end-of-file mark does not
    # survive the switch (see the README).
    await wait_output(daemon.control_socket, cid, PROMPT)
    result = await cli(daemon, "attach", "--no-tty", cid, stdin=b"echo piped-$((6*7))\n")
    assert result.returncode == 0, result.stderr
    assert b"piped-42\r\n" in result.stdout
    assert result.stderr == b"", result.stderr  # ended with the session: nothing to say
    assert await containers.status(cid) == "stopped"


async def test_pipe_mode_types_end_of_file_once_the_program_answered(
    daemon: DaemonProcess, containers: Containers
) -> None:
    # Was: the ctrl-d followed the last line at once.  It reached the terminal while
    # `read` had it in canonical mode, as the kernel's end-of-file mark, and the
    # program switched to raw mode before reading on: it read a NUL, and the
    # attach never ended (the shell between two commands does the same).  Now it
    # is typed once the program's output has been quiet: after the switch.
    script = 'read x; stty raw -echo; echo "got-$x"; head -c 1 | od -An -c; echo done'
    cid = await containers.start(daemon, ["sh", "-c", script])
    result = await cli(daemon, "attach", "--no-tty", cid, stdin=b"abc\n")
    assert result.returncode == 0, result.stderr
    assert b"got-abc" in result.stdout
    # od shows ctrl-d as 004; a NUL would be \0.
    assert re.search(rb"004\s+done", result.stdout), result.stdout
    assert await containers.status(cid) == "stopped"


async def test_pipe_mode_detach_on_eof(daemon: DaemonProcess, containers: Containers) -> None:
    cid = await containers.start(daemon)
    result = await cli(daemon, "attach", "--detach-on-eof", cid, stdin=b"echo piped-$((6*7))\n")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.decode().splitlines() if line]
    assert lines == [f"consoled: detached from {cid}; reattach with: consoled attach {cid}"]
    # What it typed reached the shell, which runs on.
    await wait_output(daemon.control_socket, cid, b"piped-42\r\n")
    assert await containers.status(cid) == "running"
    assert (await session_info(daemon, cid)).state is ev.SessionState.RUNNING
