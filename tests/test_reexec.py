"""``consoled reexec``: a new program takes over every console, and nothing is lost.

The containers are real (runc) or stand-ins whose slaves a helper holds
(:mod:`tests.support.holder`); the clients are the real ``consoled attach``,
under a real pty or on pipes.  Every test checks what a user would see: each
number a container printed reaches the log file and every attached client
exactly once, in order; no terminal hangs up; no client exits.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import consoled
from consoled.protocol import PROTOCOL_VERSION, ErrorCode
from consoled.protocol import events as ev
from consoled.terminal import Screen
from tests.conftest import BundleFactory, DaemonFactory, Spawn
from tests.support.cli import cli, ls_json
from tests.support.client import AsyncClient, screen_of, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder, running_session, streamed
from tests.support.logfiles import wait_file
from tests.support.piped import piped_cli, stalled_reader
from tests.support.runtime import Runtime
from tests.test_logfiles import parse_cri

#: Bound on one `consoled reexec` in these tests.
REEXEC_TIMEOUT = 60.0
#: Bound on the clients catching up with the container's last line.
CATCH_UP_TIMEOUT = 60.0
NUMBER = re.compile(rb"n(\d+)\r\n")


async def reexec(daemon: DaemonProcess) -> str:
    """Run ``consoled reexec``; it must succeed.  Returns its message."""
    before = daemon.pid
    readies = daemon.readies
    result = await cli(daemon, "reexec", timeout=REEXEC_TIMEOUT)
    assert result.returncode == 0, result.stderr
    await daemon.wait_ready(readies + 1)
    assert daemon.pid != before
    return result.stderr.decode()


def numbers(out: bytes) -> list[int]:
    return [int(m.group(1)) for m in NUMBER.finditer(out)]


def assert_exactly_once(values: list[int], first: int, last: int) -> None:
    """``values`` is first..last, each once, in order."""
    assert values, "no numbers at all"
    for prev, cur in itertools.pairwise(values):
        assert cur == prev + 1, f"{prev} then {cur}"
    assert (values[0], values[-1]) == (first, last), (values[0], values[-1])


async def test_reexec_under_load_loses_and_repeats_nothing(
    *,
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    tmp_path: Path,
    attach: Spawn,
    nursery: trio.Nursery,
    container_id: Callable[[str], str],
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir), "--scrollback", "8M")
    cid = container_id("load")
    # Numbered lines as fast as the shell can print them, until /out/stop appears.
    # A hangup would be recorded by the trap.
    script = (
        "trap 'echo HUP >/out/hup' HUP; i=0; "
        "while [ ! -e /out/stop ]; do i=$((i+1)); echo n$i; done; echo END-$i; exec sleep 600"
    )
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(cid)
    finally:
        await client.aclose()
    await runc.run(cid, bundle(["sh", "-c", script]), path)
    await wait_output(daemon.control_socket, cid, b"n100\r\n")

    # One client on a real terminal, one on pipes.
    tty = await attach(daemon, "--no-replay", cid)
    try:
        async with piped_cli(daemon, nursery, "attach", "--no-tty", "--no-replay", cid) as piped:
            await tty.expect(NUMBER)
            pids = [daemon.pid]
            for _ in range(3):
                mark = len(tty.output)
                await reexec(daemon)
                pids.append(daemon.pid)
                # Output keeps flowing to the clients through the new daemon.
                with trio.fail_after(CATCH_UP_TIMEOUT):
                    while not NUMBER.search(tty.output, mark + 4096):
                        await tty.wait_changed()
            assert len(set(pids)) == 4

            (out_dir / "stop").touch()
            end = re.compile(rb"END-(\d+)\r\n")
            last_line = await tty.expect(end, timeout=CATCH_UP_TIMEOUT)
            match = end.search(last_line)
            assert match is not None
            last = int(match.group(1))
            await piped.wait_for(end, timeout=CATCH_UP_TIMEOUT)
            await wait_output(daemon.control_socket, cid, b"END-")

            # The log file (its writer thread's, a moment later): every number
            # from 1, once, in order.
            logged = await wait_file(log_dir / f"{cid}.log", b"END-%d" % last)
            assert_exactly_once(numbers(logged), 1, last)
            # Each client: from where it attached to the end, once, in order.
            tty_values = numbers(bytes(tty.output))
            assert_exactly_once(tty_values, tty_values[0], last)
            piped_values = numbers(bytes(piped.out))
            assert_exactly_once(piped_values, piped_values[0], last)
            # Nobody noticed: no hangup, no client exited, nothing said on the terminal.
            assert not (out_dir / "hup").exists()
            assert tty.proc.returncode is None
            assert piped.proc.returncode is None
            assert b"consoled:" not in bytes(tty.output)
            assert piped.err == b""
            await daemon.wait_event("reexec.done")
            assert not daemon.find("reexec.failed")
    finally:
        with trio.CancelScope(shield=True):
            await runc.kill(cid)


async def test_reexec_moves_a_thousand_sessions(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    count = 1000
    daemon = await daemon_factory("--log-dir", str(tmp_path / "logs"))
    holder = await PtyHolder.start(nursery)
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        names = [f"k{n}" for n in range(count)]
        paths = [await client.create_socket(name) for name in names]
        assert await holder.hand(paths) == count
        await daemon.wait_event("session.running", count=count, timeout=60)
        await holder.say(7, "before-the-switch")
        await wait_output(daemon.control_socket, "k7", b"before-the-switch")
        # A session still waiting for its master, and one that has exited.
        waiting = await client.create_socket("late")
        await client.aclose()

        message = await reexec(daemon)
        assert f"took over {count + 1} sessions" in message

        client = await AsyncClient.connect(daemon.control_socket)
        sessions = {s.session: s for s in await client.list_sessions()}
        assert len(sessions) == count + 1
        assert all(sessions[name].state is ev.SessionState.RUNNING for name in names)
        assert sessions["late"].state is ev.SessionState.WAITING
        assert sessions["k7"].bytes_out > 0
        # Nothing hung up, and the new daemon drains and keeps what came before.
        assert await holder.hangups() == 0
        await holder.say(999, "after-the-switch")
        await wait_output(daemon.control_socket, "k999", b"after-the-switch")
        result = await cli(daemon, "logs", "k7")
        assert b"before-the-switch" in result.stdout
        # The waiting session's socket still takes its master.
        assert await holder.hand([waiting]) == count + 1
        await daemon.wait_event("session.running", session="late")
    finally:
        await client.aclose()
        await holder.aclose()
    await daemon.wait_event("session.exited", count=count + 1, timeout=60)


def installed_copy(tmp_path: Path) -> Path:
    """A copy of the consoled package: the install a test upgrades (or breaks)."""
    root = tmp_path / "install"
    shutil.copytree(
        Path(consoled.__file__).parent, root / "consoled", ignore=shutil.ignore_patterns("*.pyc")
    )
    return root


def break_install(root: Path, how: str) -> str:
    """Break an installed copy; returns what the failure must say."""
    if how == "import-error":
        path = root / "consoled" / "server" / "daemon.py"
        path.write_text('raise ImportError("planted: this install is broken")\n')
        return "planted: this install is broken"
    if how == "older":
        # A program from before records said their slack: it cannot read them.
        path = root / "consoled" / "io" / "record.py"
        source = path.read_text()
        assert "LOADABLE: Final = (1, 2, 3)" in source
        path.write_text(source.replace("LOADABLE: Final = (1, 2, 3)", "LOADABLE: Final = (1, 2)"))
        return "reads session records of version [1, 2] only, not 3"
    if how == "fails-to-adopt":
        # Starts, and fails once the old daemon has quiesced and frozen its readers.
        path = root / "consoled" / "server" / "inventory.py"
        path.write_text(
            path.read_text()
            + "\n\ndef restore(*args, **kwargs):\n"
            + '    raise RuntimeError("planted: cannot adopt")\n'
        )
        return "planted: cannot adopt"
    path = root / "consoled" / "__main__.py"
    path.write_text("import sys\nsys.exit(1)\n")
    return "exited with status 1"


@pytest.mark.parametrize("how", ["import-error", "exits-1", "older", "fails-to-adopt"])
async def test_reexec_into_a_broken_install_keeps_the_old_daemon(
    daemon_factory: DaemonFactory,
    nursery: trio.Nursery,
    tmp_path: Path,
    attach: Spawn,
    how: str,
) -> None:
    root = installed_copy(tmp_path)
    # The daemon runs the copy, as a package manager would have installed it.
    daemon = await daemon_factory(extra_env={"PYTHONPATH": str(root)})
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "keep")
        old = daemon.pid

        why = break_install(root, how)
        result = await cli(daemon, "reexec", timeout=REEXEC_TIMEOUT)
        assert result.returncode == 1
        err = result.stderr.decode()
        assert "reexec failed" in err and why in err, err
        assert "Traceback" not in err
        failed = await daemon.wait_event("reexec.failed")
        assert why in failed["error"]

        # The old daemon serves on as if nothing had happened.
        assert daemon.pid == old
        assert daemon.readies == 2  # READY=1 again after RELOADING=1
        assert await holder.hangups() == 0
        proc = await attach(daemon, "--no-replay", "keep")
        await holder.say(0, "still-served")
        await proc.expect(b"still-served")
        result = await cli(daemon, "ls", "--json")
        assert result.returncode == 0
    finally:
        await holder.aclose()


async def test_reexec_over_the_protocol_and_info_shows_the_new_program(
    daemon: DaemonProcess,
) -> None:
    result = await cli(daemon, "info", "--json")
    before = json.loads(result.stdout)
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await client.request(ev.Reexec())
        assert isinstance(reply, ev.Reexeced), reply
        assert reply.pid != before["pid"]
        assert reply.version == consoled.__version__
        # The connection that asked is closed once it has its answer.
        assert await client.receive() is None
    finally:
        await client.aclose()
    await daemon.wait_ready(2)
    assert daemon.pid == reply.pid
    # The daemon that took over serves the same sockets, and says when it started.
    result = await cli(daemon, "info", "--json")
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert after["pid"] == reply.pid
    assert after["version"] == consoled.__version__
    assert after["started"] > before["started"]


async def test_a_second_reexec_waits_for_the_first(daemon: DaemonProcess) -> None:
    first = await AsyncClient.connect(daemon.control_socket)
    second = await AsyncClient.connect(daemon.control_socket)
    try:
        await first.send(ev.Reexec())
        await daemon.wait_event("reexec.starting")
        reply = await second.request(ev.Reexec())
        # Refused with a reason while the first runs, or answered as "restarting"
        # (sent again, it reaches the successor): never two handovers at once.
        assert isinstance(reply, ev.Error), reply
        assert reply.code in (ErrorCode.REEXEC_FAILED, ErrorCode.RESTARTING), reply
        assert isinstance(await first.receive(), ev.Reexeced)
    finally:
        await first.aclose()
        await second.aclose()
    await daemon.wait_ready(2)


async def test_connections_queued_during_the_handover_are_answered(
    daemon_factory: DaemonFactory, nursery: trio.Nursery
) -> None:
    # Many sessions make the handover take a while; clients that connect all
    # through it wait in the backlog of the listening socket that moves to
    # the successor, and every one is answered: none is refused or reset.
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        paths = [await client.create_socket(f"q{n}") for n in range(300)]
        await holder.hand(paths)
        await daemon.wait_event("session.running", count=300)
    finally:
        await client.aclose()
    old = daemon.pid
    answers: list[int] = []
    done = trio.Event()
    answered = trio.Event()

    async def keep_asking() -> None:
        # One `info` after another, over the protocol, until the reexec is over.
        while not done.is_set():
            c = await AsyncClient.connect(daemon.control_socket, hello=False)
            try:
                # If the daemon said 'restarting' and closed, that is read below:
                # in place of the welcome, or of the answer.
                with contextlib.suppress(trio.BrokenResourceError):
                    await c.send(ev.Hello(PROTOCOL_VERSION, "tests"))
                reply = await c.receive()
                if isinstance(reply, ev.Welcome):
                    with contextlib.suppress(trio.BrokenResourceError):
                        await c.send(ev.GetInfo())
                    reply = await c.receive()
                assert reply is not None, "closed without a word"
                if isinstance(reply, ev.Error):
                    # Connected just as the old daemon drained: told to send it again.
                    assert reply.code is ErrorCode.RESTARTING, reply
                    continue
                assert isinstance(reply, ev.DaemonInfo), reply
                answers.append(reply.pid)
                answered.set()
            finally:
                await c.aclose()

    try:
        async with trio.open_nursery() as askers:
            for _ in range(4):
                askers.start_soon(keep_asking)
            await reexec(daemon)
            # A few more answers from the successor, then stop asking.
            with trio.fail_after(REEXEC_TIMEOUT):
                while answers.count(daemon.pid) < 20:
                    answered = trio.Event()
                    await answered.wait()
            done.set()
        # Every question was answered, by the old daemon or by the new one.
        assert set(answers) == {old, daemon.pid}
    finally:
        await holder.aclose()
    await daemon.wait_event("session.exited", count=300, timeout=60)


async def test_the_screen_goes_to_the_successor_as_it_was(
    daemon_factory: DaemonFactory, nursery: trio.Nursery
) -> None:
    """Attach after a reexec draws the old daemon's screen, not one rebuilt from the ring."""
    # Was: the successor rebuilt every screen from the ring, so a session that
    # had printed more than the ring holds came back approximate, its older
    # lines blank, until its program redrew.
    daemon = await daemon_factory("--scrollback", "4K")
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "scr")
        await holder.sink(0)  # raw: the lines arrive as written
        control = await AsyncClient.connect(daemon.control_socket)
        assert isinstance(await control.request(ev.Resize("scr", 10, 40)), ev.Resized)
        await control.aclose()

        async def drawn() -> tuple[list[str], bool]:
            """The screen an attach draws now (the daemon brings it up to date)."""
            client = await AsyncClient.connect(daemon.control_socket)
            try:
                attached = await client.request(ev.Attach("scr", screen=True))
                assert isinstance(attached, ev.Attached), attached
                render, approximate = await screen_of(client)
            finally:
                await client.aclose()
            screen = Screen(10, 40)
            screen.feed(render)
            return screen.text(), approximate

        await holder.say(0, "\x1b[2J\x1b[1;1Hpinned-top-line")
        # Twice what the ring holds, all below the first line. An attach
        # every 25 lines (2 KiB) keeps the daemon's screen up to date.
        for n in range(100):
            await holder.say(0, f"\x1b[5;1Hcounter-{n:03d}-{'x' * 60}")
            if n % 25 == 24:
                await wait_output(daemon.control_socket, "scr", f"counter-{n:03d}".encode())
                text, approximate = await drawn()
                assert text[0] == "pinned-top-line" and not approximate
        message = await reexec(daemon)
        assert message.endswith("took over 1 session\n"), message
        text, approximate = await drawn()
        assert not approximate
        assert text[0] == "pinned-top-line"
        assert text[4].startswith("counter-099-")
    finally:
        await holder.aclose()


async def test_a_client_too_far_behind_is_told_what_it_missed(
    daemon_factory: DaemonFactory, nursery: trio.Nursery
) -> None:
    daemon = await daemon_factory("--scrollback", "4K")
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "far")
        async with piped_cli(daemon, nursery, "attach", "--no-tty", "--no-replay", "far") as client:
            await daemon.wait_event("client.attached", session="far")
            # The client stops reading; the daemon moves on, and much more
            # than the ring holds is written before the client comes back.
            client.proc.send_signal(signal.SIGSTOP)
            await reexec(daemon)
            for n in range(100):
                await holder.say(0, f"line-{n:03d}-" + "x" * 80)
            await wait_output(daemon.control_socket, "far", b"line-099-")
            client.proc.send_signal(signal.SIGCONT)
            await holder.say(0, "after-the-gap")
            await client.wait_for(b"after-the-gap", timeout=REEXEC_TIMEOUT)
            lost = re.compile(rb"(\d+) bytes of output were lost")
            await client.wait_for(lost, stderr=True, timeout=REEXEC_TIMEOUT)
            missed = lost.search(client.err)
            assert missed is not None
            out = bytes(client.out)
            # It got the newest 4K, and was told exactly how much came before it.
            assert int(missed.group(1)) + len(out) >= 100 * 90
            assert b"line-099-" in out and b"line-000-" not in out
            assert client.proc.returncode is None
    finally:
        await holder.aclose()


async def test_a_cri_log_goes_on_after_a_reexec_without_repeating_a_record(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Was: a CRI file's written_to reached the session's record only with a
    # rotation, so the successor took the file to be where the session
    # started and wrote everything the ring held into it again.
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir), "--log-format-file", "cri")
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "c1")
        for n in range(5):
            await holder.say(0, f"before-{n}")
        await wait_output(daemon.control_socket, "c1", b"before-4")
        await reexec(daemon)
        await holder.say(0, "after-0")
        await wait_output(daemon.control_socket, "c1", b"after-0")
        await reexec(daemon)
        await holder.say(0, "after-1")
        await wait_output(daemon.control_socket, "c1", b"after-1")
        # The file is its writer thread's, written a moment after the output.
        lines = parse_cri(await wait_file(log_dir / "c1.log", b"after-1")).splitlines()
        expected = [f"before-{n}" for n in range(5)] + ["after-0", "after-1"]
        assert [line.decode().strip() for line in lines] == expected
    finally:
        await holder.aclose()


@pytest.mark.parametrize("fmt", ["raw", "cri"])
async def test_logs_follow_rides_out_reexecs_and_shows_each_line_once(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path, fmt: str
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir), "--log-format-file", fmt)
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "f1")
        await holder.say(0, "line-0")
        await wait_output(daemon.control_socket, "f1", b"line-0")
        async with piped_cli(daemon, nursery, "logs", "-f", "f1") as follower:
            await follower.wait_for(b"line-0")
            for n in range(1, 3):
                await reexec(daemon)
                await holder.say(0, f"line-{n}")
                await follower.wait_for(f"line-{n}".encode())
            result = await cli(daemon, "rm", "--force", "f1")
            assert result.returncode == 0, result.stderr
            assert await follower.wait() == 0
            assert follower.out.replace(b"\r", b"").splitlines() == [
                b"line-0",
                b"line-1",
                b"line-2",
            ]
    finally:
        await holder.aclose()


#: `consoled logs` options, and the daemon's, for the slow reader below.
SLOW_READER = {
    "ring": ([], ["--scrollback", "4M"]),
    "raw-files": ([], ["--log-max-size", "256K"]),
    "cri-files": ([], ["--log-format-file", "cri", "--log-max-size", "256K"]),
    "raw-files-t": (["-t"], ["--log-max-size", "256K"]),
    "cri-files-t": (["-t"], ["--log-format-file", "cri", "--log-max-size", "256K"]),
    "cri-files-follow": (["-f"], ["--log-format-file", "cri", "--log-max-size", "256K"]),
}
STAMPED_LINE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (0000 \d{9} -+\n)")


@pytest.mark.parametrize("where", list(SLOW_READER))
async def test_a_logs_reader_slower_than_a_reexec_gets_every_line_once(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path, where: str
) -> None:
    """`consoled logs x | less`: the reader takes longer than the reexec waits
    (1 s), so the stream is cut, in the middle of a message; the CLI goes on
    with the successor where it stood, in the log files or in the ring."""
    # Was: "protocol error talking to the daemon: connection closed inside a
    # frame", and the output ended with what the pipes held (4,096 lines).
    options, serve = SLOW_READER[where]
    if where != "ring":
        serve = ["--log-dir", str(tmp_path / "logs"), "--log-max-files", "100", *serve]
    daemon = await daemon_factory(*serve)
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "big")
        await holder.stream(0, 1.5, 20000)
        written = (await holder.wait_streams(30))[0]
        # Far more than the pipes and the socket hold: the daemon is still
        # sending when the reexec comes.
        assert written * 64 > 1_000_000
        await wait_output(daemon.control_socket, "big", f"0000 {written:09d} ".encode())
        argv = [sys.executable, "-m", "consoled", "logs", *options, "big"]
        async with stalled_reader(argv, daemon.env()) as reader:
            with trio.fail_after(CATCH_UP_TIMEOUT):
                await reexec(daemon)
                if "-f" in options:
                    while len(reader.out) < written * 64:
                        await reader.read_some()
                    # Following ends when the session does.
                    result = await cli(daemon, "rm", "--force", "big")
                    assert result.returncode == 0, result.stderr
                err = await reader.read_to_end()
        out = reader.out
        assert err == b"", err.decode()
        if "-t" in options:
            body = b"".join(STAMPED_LINE.fullmatch(line + b"\n").group(1)  # type: ignore[union-attr]
                            for line in out.split(b"\n")[:-1])  # fmt: skip
        else:
            body = bytes(out)
        assert body == streamed(0, written)
        event = await daemon.wait_event("client.following", resumed=True)
        assert event["session"] == "big"
    finally:
        await holder.aclose()


async def test_a_logs_reader_whose_file_rotated_away_during_a_reexec_is_told(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The reader stalls, the log rotates the file it was reading away, a
    reexec cuts it off: it goes on from the oldest file kept and says that
    output was lost between (the old daemon's open file is gone with it)."""
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory(
        "--log-dir", str(log_dir), "--log-max-size", "256K", "--log-max-files", "2"
    )
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "rot")
        await holder.stream(0, 1.0, 12000)
        first = (await holder.wait_streams(30))[0]
        await wait_output(daemon.control_socket, "rot", f"0000 {first:09d} ".encode())
        argv = [sys.executable, "-m", "consoled", "logs", "rot"]
        async with stalled_reader(argv, daemon.env()) as reader:
            with trio.fail_after(CATCH_UP_TIMEOUT):
                # Three files' worth more: every file the reader's stream had is gone.
                await holder.say(0, "second-part")
                await holder.stream(0, 1.0, 12000)
                second = (await holder.wait_streams(30))[0]
                await wait_output(daemon.control_socket, "rot", f"0000 {second:09d} ".encode())
                await reexec(daemon)
                err = await reader.read_to_end()
        out = reader.out
        assert b"the log file this client was reading has rotated away" in err, err
        lines = [int(n) for n in re.findall(rb"0000 (\d{9}) ", bytes(out))]
        # What the first part's files held, then a gap, then the end of the second.
        assert b"second-part\n" not in out, "the files holding the seam were rotated away"
        restart = next(i for i in range(1, len(lines)) if lines[i] != lines[i - 1] + 1)
        assert lines[:restart] == list(range(lines[0], lines[0] + restart))
        assert lines[restart:] == list(range(lines[restart], second + 1))
        assert lines[restart] > 1
    finally:
        await holder.aclose()


async def test_keys_waiting_for_a_full_terminal_go_to_the_successor_once(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Input the old daemon still held for a terminal that was not reading is
    sent again by the client to the new one: every key arrives once, in order."""
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "in1")
        await holder.leave_unread(0)
        async with piped_cli(daemon, nursery, "attach", "--no-tty", "--no-replay", "in1") as client:
            # 48 KB: the pty takes about 20 and the daemon queues the rest.
            typed = b"".join(b"%05d," % i for i in range(8000))
            await client.send(typed)
            await daemon.wait_event("audit", action="input")
            await reexec(daemon)
            got = await holder.drain(0, len(typed), tmp_path / "typed")
            assert len(got) == len(typed) and got == typed
            assert await holder.drain(0, 1, tmp_path / "more", within=0.5) == b"", "only once"
            said = await client.killed()
            assert said == b"", said  # nothing said lost, nor any byte of output missed
    finally:
        await holder.aclose()


async def test_an_answer_waiting_for_a_full_terminal_goes_to_the_successor_once(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A program asks the terminal (DA1) while its input is full: the answer
    waits in the daemon.  A reexec hands it over, and the program reads it,
    once, when its input has room again."""
    # Was: lost with the old daemon; a program waiting for it (most give up
    # after a while) never got it.
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "ask")
        await holder.leave_unread(0)
        async with piped_cli(daemon, nursery, "attach", "--no-tty", "--no-replay", "ask") as client:
            typed = b"".join(b"%05d," % i for i in range(8000))  # more than the pty takes
            await client.send(typed)
            await daemon.wait_event("audit", action="input")
            await holder.say(0, "\x1b[c")  # the query, with the terminal full
            await daemon.wait_event("client.attached", session="ask")
            await reexec(daemon)
            got = await holder.drain(0, len(typed), tmp_path / "typed")
            # Some output, and the successor tries the terminal again.
            await holder.say(0, "more")
            got += await holder.drain(0, 7, tmp_path / "answer", within=10)
            got += await holder.drain(0, 1, tmp_path / "more", within=0.5)
            answers = re.findall(rb"\x1b\[\?1;2c", got)
            assert len(answers) == 1, got[-100:]
            assert got.replace(answers[0], b"") == typed
    finally:
        await holder.aclose()


async def test_keys_of_a_client_whose_socket_is_full_reach_the_terminal_once_after_a_reexec(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The terminal is not reading, and neither is the client: its `ended`
    (with how much of its input was consumed) cannot reach it, so the reexec
    cuts it off and it goes on as after a crash, sending none of its keys
    again.  The keys the old daemon still held are handed to the new one,
    which writes them, each once, in order."""
    # Was: they were lost with the old daemon.
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        await running_session(daemon, holder, "full")
        await holder.leave_unread(0)
        assert isinstance(await client.request(ev.Attach("full", replay=0)), ev.Attached)
        # About 1 MB of output the client never reads: its socket fills (and
        # the daemon queues the rest, well within the client's queue).
        await holder.stream(0, 0.5, 30000)
        await holder.wait_streams(30)
        typed = b"".join(b"%05d," % i for i in range(8000))  # 48 KB: the pty takes about 20
        await client.send(ev.Input(typed))
        await daemon.wait_event("audit", action="input")
        await reexec(daemon)
        got = await holder.drain(0, len(typed), tmp_path / "typed")
        assert got == typed
        assert await holder.drain(0, 1, tmp_path / "more", within=0.5) == b"", "only once"
    finally:
        await client.aclose()
        await holder.aclose()


async def test_keys_typed_before_the_master_arrives_reach_it_after_a_reexec(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A client attached to a waiting session types; a reexec comes before the
    runtime hands the master over; the keys reach the terminal once."""
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    try:
        client = await AsyncClient.connect(daemon.control_socket)
        try:
            path = await client.create_socket("early")
        finally:
            await client.aclose()
        async with piped_cli(daemon, nursery, "attach", "--no-tty", "early") as attached:
            await daemon.wait_event("client.attached", session="early")
            typed = b"typed-while-waiting\n"
            await attached.send(typed)
            await daemon.wait_event("audit", action="input")
            await reexec(daemon)
            await holder.hand([path])
            await daemon.wait_event("session.running", session="early")
            assert await holder.drain(0, len(typed), tmp_path / "typed") == typed
            assert await holder.drain(0, 1, tmp_path / "more", within=0.5) == b"", "only once"
            said = await attached.killed()
            assert said == b"", said
    finally:
        await holder.aclose()


async def test_a_reexec_keeps_the_window_size_the_clients_had(
    daemon_factory: DaemonFactory, nursery: trio.Nursery
) -> None:
    """Under ``latest``, clients coming back from a reexec do not resize the terminal
    to whichever came back last; the next one to type does, as before."""
    # Was: each resumed client counted as newly active, so the last one back
    # took the terminal to its own window (the program got a SIGWINCH and
    # redrew for a size nobody had chosen).
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    clients: list[AsyncClient] = []

    async def attach(
        rows: int, cols: int, resume: int | None = None, uid: str | None = None
    ) -> tuple[AsyncClient, ev.Attached]:
        client = await AsyncClient.connect(daemon.control_socket)
        clients.append(client)
        request = ev.Attach("sz", replay=0, rows=rows, cols=cols, resume=resume, uid=uid)
        reply = await client.request(request)
        assert isinstance(reply, ev.Attached), reply
        return client, reply

    async def size() -> tuple[object, object]:
        (info,) = [s for s in await ls_json(daemon) if s["session"] == "sz"]
        return info["rows"], info["cols"]

    try:
        await running_session(daemon, holder, "sz")
        small, small_attached = await attach(24, 80)
        large, large_attached = await attach(40, 120)  # the latest: the terminal is its size
        assert await size() == (40, 120)
        await reexec(daemon)
        ended = {}
        for name, client in (("small", small), ("large", large)):
            while not isinstance(event := await client.receive(), ev.Ended):
                assert isinstance(event, ev.Output), event
            assert event.reason is ev.EndReason.RESTARTING, event
            ended[name] = event
        # The large one comes back first, the small one last.
        await attach(40, 120, resume=ended["large"].resume, uid=large_attached.uid)
        small, _ = await attach(24, 80, resume=ended["small"].resume, uid=small_attached.uid)
        assert await size() == (40, 120)
        await small.send(ev.Input(b"x"))  # active again: latest
        out = b""
        while b"x" not in out:  # the echo: the key was written, after the resize
            event = await small.receive()
            assert isinstance(event, ev.Output), event
            out += event.data
        assert await size() == (24, 80)
    finally:
        for client in clients:
            await client.aclose()
        await holder.aclose()


async def test_clients_of_a_session_renamed_before_a_reexec_go_on_with_it(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """An attached client and a ``logs -f`` of a session renamed while they
    ran resume on it after the reexec (found by its uid), even with its old
    name taken by another session; the attach then names it by its new name."""
    # Was: both stopped at the reexec, the attach saying "session old1 ended
    # (exit status unknown)" of a session that ran on as new1.
    daemon = await daemon_factory()
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "old1")
        async with (
            piped_cli(daemon, nursery, "attach", "--no-tty", "--no-replay", "old1") as attached,
            piped_cli(daemon, nursery, "logs", "-f", "old1") as following,
        ):
            await daemon.wait_event("client.attached", session="old1")
            await holder.say(0, "before-the-rename")
            await attached.wait_for(b"before-the-rename")
            await following.wait_for(b"before-the-rename")
            assert (await cli(daemon, "rename", "old1", "new1")).returncode == 0
            assert (await cli(daemon, "socket", "old1")).returncode == 0  # the old name, taken
            await reexec(daemon)
            await holder.say(0, "after-the-reexec")
            await attached.wait_for(b"after-the-reexec", timeout=REEXEC_TIMEOUT)
            await following.wait_for(b"after-the-reexec", timeout=REEXEC_TIMEOUT)
            await holder.leave_unread(0)
            await attached.send(b"typed-after")
            assert await holder.drain(0, 11, tmp_path / "typed") == b"typed-after"
            await holder.aclose()  # the session ends
            assert await attached.wait() == 0
            said = bytes(attached.err).decode()
            assert said == "consoled: session new1 ended (exit status unknown)\n", said
            assert await following.wait() == 0
            assert following.err == b""
    finally:
        await holder.aclose()
