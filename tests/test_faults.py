"""Faults are inputs too: each costs only the request, connection or file it touched.

Against a real daemon with real runc containers: the process out of file
descriptors, a log directory that is a symlink, writable by others or
someone else's, files planted in it (a FIFO, a directory), a log directory
that fills up, a log disk that stalls or stops answering reads, and streams
whose clients vanish.  After each, the daemon is
alive, every session still holds its master and drains, and an attached
client still sees its typing echoed.  (A broken stderr and SIGHUP are in
tests/test_daemon_logs.py and tests/test_lifecycle.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import BundleFactory, DaemonFactory
from tests.support.cli import cli, ls_json
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.frozen import freezable_dir
from tests.support.holder import PtyHolder, running_session
from tests.support.hungfile import hung_file
from tests.support.logfiles import wait_file
from tests.support.runtime import Runtime

#: A shell that echoes computed answers: the echo of the command line never matches.
ECHOER = ["sh", "-c", 'echo up; while read x; do echo "got-$((x*2))"; done']


async def echoes(attach: AsyncClient, n: int) -> None:
    """Type ``n`` into an attached echoer; its answer must come back."""
    await attach.send(ev.Input(b"%d\r" % n))
    out, ended = await attach.read_output_until(b"got-%d" % (2 * n))
    assert ended is None, out


async def start_echoer(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    cid: str,
    script: str = ECHOER[2],
) -> AsyncClient:
    """A container running ECHOER (or ``script``) on a session of ``daemon``, and a
    client attached to it."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(cid)
    finally:
        await client.aclose()
    attach = await AsyncClient.connect(daemon.control_socket)
    reply = await attach.request(ev.Attach(cid))
    assert isinstance(reply, ev.Attached), reply
    await runc.run(cid, bundle(["sh", "-c", script]), path)
    out, ended = await attach.read_output_until(b"up\r\n")
    assert ended is None, out
    return attach


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- file descriptors -------------------------------------------------------------------


async def test_out_of_fds_costs_only_requests(
    *,
    short_tmp: Path,
    nursery: trio.Nursery,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # Was: `prlimit --nofile=256` and about 120 console sockets, then the next
    # `consoled ls` crashed the daemon (an unhandled EMFILE from accept) and
    # every container's terminal hung up.
    daemon = DaemonProcess(
        short_tmp / "s", ["--log-dir", str(tmp_path / "logs")], nofile=(256, 256)
    )
    await daemon.start(nursery)
    cid = container_id("fds")
    attach = await start_echoer(daemon, runc, bundle, cid)
    held: list[AsyncClient] = []
    try:
        # Console sockets until the daemon says it is near its limit: it keeps
        # fds in hand for its sessions and clients instead of running out.
        client = await AsyncClient.connect(daemon.control_socket)
        refused = None
        for n in range(200):
            reply = await client.request(ev.CreateSocket(f"w{n}"))
            if isinstance(reply, ev.Error):
                refused = reply
                break
            assert isinstance(reply, ev.SocketCreated), reply
        assert refused is not None and refused.code is ErrorCode.LIMIT_EXCEEDED, refused
        assert "open-file limit" in refused.message
        # The connection that was refused goes on working.
        assert len(await client.list_sessions()) > 50
        # Connections until there is no fd left at all: the next ones are told
        # why and closed, not left hanging, and the daemon lives on.
        told: ev.Error | None = None
        for _ in range(64):
            c = await AsyncClient.connect(daemon.control_socket, hello=False)
            held.append(c)
            await c.send(ev.Hello(1, "filler"))
            answer = await c.receive()
            if isinstance(answer, ev.Error):
                told = answer
                break
        assert told is not None and told.code is ErrorCode.OUT_OF_RESOURCES, told
        assert "out of file descriptors" in told.message
        # Through all of it the session drains and the attached client types.
        await echoes(attach, 21)
        for c in held:
            await c.aclose()
        held.clear()
        # With fds free again, everything works as before.
        result = await cli(daemon, "ls")
        assert result.returncode == 0, result.stderr
        await echoes(attach, 22)
        assert (await runc.state(cid))["status"] == "running"
        await client.aclose()
    finally:
        for c in held:
            await c.aclose()
        await attach.aclose()
        await runc.kill(cid)
        await daemon.wait_event("session.exited", session=cid)
        assert await daemon.stop() == 0
    assert daemon.internal_errors() == []
    assert daemon.find("listener.accept_failed", listener="listen.control")


async def test_logs_streams_whose_clients_vanish_leak_no_fd(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # Was: each `logs` request opened the session's log file before the
    # try/finally that closes it: 50 clients that closed at once leaked 50 fds,
    # each pinning a possibly deleted file.
    daemon = await daemon_factory("--log-dir", str(tmp_path / "logs"))
    cid = container_id("leak")
    attach = await start_echoer(daemon, runc, bundle, cid)
    try:
        await echoes(attach, 1)
        # Written (a writer thread opens the file's time index with its first output).
        await wait_file(tmp_path / "logs" / f"{cid}.log", b"got-2")
        before = fds_of(daemon.pid)
        for _ in range(50):
            c = await AsyncClient.connect(daemon.control_socket)
            await c.send(ev.Logs(cid))
            await c.aclose()  # gone before the answer
        result = await cli(daemon, "logs", cid)
        assert b"got-2" in result.stdout
        with trio.fail_after(10):
            while fds_of(daemon.pid) > before:  # noqa: ASYNC110 - an fd count has no event
                await trio.sleep(0.05)
        assert fds_of(daemon.pid) == before
    finally:
        await attach.aclose()
        await runc.kill(cid)


# --- the log directory ----------------------------------------------------------------


async def serve_and_fail(state_dir: Path, *args: str) -> str:
    """Run ``consoled serve ARGS``; it must refuse to start.  Returns what it said."""
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "consoled", "serve", "--state-dir", str(state_dir), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 1, result.stderr
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    return err


@pytest.mark.parametrize("how", ["symlink", "world-writable", "someone-elses"])
async def test_an_unsafe_log_directory_is_refused(
    short_tmp: Path, tmp_path: Path, how: str
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    log_dir = real
    if how == "symlink":
        # Whoever controls the link could make root replace files elsewhere.
        log_dir = tmp_path / "link"
        log_dir.symlink_to(real)
        expected = "is a symlink"
    elif how == "world-writable":
        real.chmod(0o777)
        expected = "writable by others"
    else:
        os.chown(real, 65534, 65534)
        expected = "belongs to uid 65534"
    err = await serve_and_fail(short_tmp / "s", "--log-dir", str(log_dir))
    assert expected in err and str(log_dir) in err, err
    assert list(real.iterdir()) == []


async def test_a_fifo_planted_in_the_log_directory_blocks_nothing(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # Was: `mkfifo DIR/ID.log.1` froze the whole daemon on the next `logs`,
    # in a blocking open().
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir))
    cid = container_id("fifo")
    attach = await start_echoer(daemon, runc, bundle, cid)
    try:
        await echoes(attach, 5)
        os.mkfifo(log_dir / f"{cid}.log.1")
        result = await cli(daemon, "logs", cid, timeout=20)
        assert result.returncode == 0, result.stderr
        assert b"got-10" in result.stdout  # served from the session's ring
        await daemon.wait_event("logfile.unreadable", session=cid)
        await echoes(attach, 6)
    finally:
        await attach.aclose()
        await runc.kill(cid)


async def test_a_directory_planted_at_a_log_file_name_still_lets_the_container_start(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # Was: `mkdir DIR/ID.log` stopped that container from ever starting: the
    # master arrived on the well-known socket and was closed, and runc failed
    # with "container process is already dead".
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir))
    cid = container_id("dir")
    log_dir.joinpath(f"{cid}.log").mkdir()
    await runc.run(cid, bundle(ECHOER), daemon.console_socket)
    await daemon.wait_event("logfile.create_failed", session=cid)
    await wait_output(daemon.control_socket, cid, b"up\r\n")
    attach = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await attach.request(ev.Attach(cid, replay=0))
        assert isinstance(reply, ev.Attached), reply
        await echoes(attach, 7)
    finally:
        await attach.aclose()
        await runc.kill(cid)


async def test_a_full_log_directory_costs_the_file_and_the_file_catches_up(
    *,
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    short_tmp: Path,
    container_id: Callable[[str], str],
) -> None:
    # The log directory is a 256 KiB tmpfs in the daemon's own mount namespace;
    # a filler file takes most of it.
    log_dir = short_tmp / "logs"
    log_dir.mkdir(mode=0o700)
    mount = f'mount -t tmpfs -o size=256k,mode=0700 tmpfs {log_dir} && exec "$@"'
    daemon = await daemon_factory(
        "--log-dir", str(log_dir),
        wrapper=["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"],
    )  # fmt: skip
    inside = Path(f"/proc/{daemon.pid}/root") / str(log_dir).lstrip("/")
    filler = inside / "filler"
    filler.write_bytes(b"f" * 224 * 1024)
    cid = container_id("full")
    # 2,000 numbered lines (about 44 KiB, more than the 32 KiB left), then a
    # tick every 0.1 s until told to stop.
    script = (
        "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo line-$i-of-the-log; done; "
        "echo first-part-done; while [ ! -e /out/stop ]; do echo tick; usleep 100000; done; "
        "echo stopped"
    )
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(cid)
        await runc.run(cid, bundle(["sh", "-c", script]), path)
        await wait_output(daemon.control_socket, cid, b"first-part-done")
        failed = await daemon.wait_event("logfile.write_failed", session=cid)
        assert "No space left on device" in failed["error"]
        # The session still drains and answers; `logs` serves everything, the
        # file's part and then the ring's.
        result = await cli(daemon, "logs", cid)
        assert result.stdout.count(b"-of-the-log") == 2000
        # Space again: within the daemon's retry interval (5 s) the next write
        # catches the file up from the ring.
        filler.unlink()
        await daemon.wait_event("logfile.writing_again", session=cid, timeout=30)
        (out_dir / "stop").touch()
        await wait_output(daemon.control_socket, cid, b"stopped")
        logged = await wait_file(inside / f"{cid}.log", b"stopped\r\n")
        lines = [line for line in logged.split(b"\r\n") if line.startswith(b"line-")]
        assert lines == [b"line-%d-of-the-log" % n for n in range(1, 2001)]
        assert logged.endswith(b"stopped\r\n")
        assert not daemon.find("logfile.gap")
    finally:
        await client.aclose()
        await runc.kill(cid)


async def test_a_stalled_log_disk_holds_only_its_files(
    *,
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # Was: log files were written on the event loop, and a write to a disk
    # that stalls (an NFS server gone, a dying disk; here a file system frozen
    # with fsfreeze) waits in the kernel: the first output after the freeze
    # held every console, every client and every request until the thaw.
    with freezable_dir(tmp_path) as disk:
        log_dir = disk.path / "logs"
        log_dir.mkdir(mode=0o700)
        daemon = await daemon_factory("--log-dir", str(log_dir))
        first, second, third = container_id("stall"), container_id("calm"), container_id("new")
        # An echoer that floods when told to (about 330 KB, more than may
        # queue for a file: its reader waits for the writer, then goes on).
        script = (
            "echo up; while read x; do case $x in "
            'flood) seq 1 40000 | sed "s/^/n-/"; echo flooded;; '
            '*) echo "got-$((x*2))";; esac; done'
        )
        a = b = None
        try:
            a = await start_echoer(daemon, runc, bundle, first, script)
            b = await start_echoer(daemon, runc, bundle, second)
            await echoes(a, 1)
            disk.freeze()
            # Typing echoes, on both; the flood goes by; the daemon answers.
            await echoes(a, 2)
            await echoes(b, 3)
            await a.send(ev.Input(b"flood\r"))
            out, ended = await a.read_output_until(b"flooded\r\n")
            assert ended is None and out.count(b"n-") == 40000
            await daemon.wait_event("logfile.stalled", session=first)
            listed = await cli(daemon, "ls")
            assert listed.returncode == 0 and first.encode() in listed.stdout
            shown = await cli(daemon, "logs", second)  # its file does not answer: the ring
            assert shown.returncode == 0 and b"got-6" in shown.stdout
            made = await cli(daemon, "socket", third)  # its file is made after the thaw
            assert made.returncode == 0, made.stderr
            # A reexec would leave the files to two daemons: refused, saying why.
            refused = await cli(daemon, "reexec")
            assert refused.returncode != 0
            assert b"stalled disk" in refused.stderr, refused.stderr
            await echoes(a, 4)
            disk.thaw()
            # The files catch up from the rings: everything, in order, once.
            await daemon.wait_event("logfile.writing_again", session=first, timeout=30)
            await echoes(a, 5)
            await echoes(b, 6)
            logged = await wait_file(log_dir / f"{first}.log", b"got-10")
            lines = [x for x in logged.split(b"\r\n") if x.startswith(b"n-")]
            assert lines == [b"n-%d" % n for n in range(1, 40001)]
            for n in (2, 4, 8, 10):
                assert logged.count(b"got-%d\r\n" % n) == 1
            logged = await wait_file(log_dir / f"{second}.log", b"got-12")
            assert b"got-6\r\n" in logged
            assert (log_dir / f"{third}.log").exists()
            assert not daemon.find("logfile.gap")
            # And now a reexec is done.
            again = await cli(daemon, "reexec")
            assert again.returncode == 0, again.stderr
        finally:
            disk.thaw()
            for client in (a, b):
                if client is not None:
                    await client.aclose()
            await runc.kill(first)
            await runc.kill(second)


async def test_a_daemon_starts_and_reexecs_while_its_log_disk_is_frozen(
    *,
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    # Was: a daemon's first step, mkdir -p of the log directory, waits for a
    # frozen (or stalled) file system even where the directory exists.  A
    # daemon started then, or a reexec's successor, hung before serving: the
    # reexec failed when its handover timed out, and a restart after a crash
    # would have held every console until the disk answered.
    with freezable_dir(tmp_path) as disk:
        log_dir = disk.path / "logs"
        log_dir.mkdir(mode=0o700)
        (disk.path / "other").mkdir(mode=0o700)
        daemon = await daemon_factory("--log-dir", str(log_dir))
        cid = container_id("frozen")
        a = None
        try:
            a = await start_echoer(daemon, runc, bundle, cid)
            await echoes(a, 1)
            await wait_file(log_dir / f"{cid}.log", b"got-2\r\n")  # nothing left to write
            disk.freeze()
            with trio.fail_after(20):
                other = await daemon_factory("--log-dir", str(disk.path / "other"))
            assert (await cli(other, "ls")).returncode == 0
            done = await cli(daemon, "reexec", "--timeout", "20")
            assert done.returncode == 0, done.stderr
            await a.aclose()  # (this client does not resume: attach again)
            a = await AsyncClient.connect(daemon.control_socket)
            assert isinstance(await a.request(ev.Attach(cid)), ev.Attached)
            await echoes(a, 2)  # the successor serves; its file waits for the disk
            disk.thaw()
            logged = await wait_file(log_dir / f"{cid}.log", b"got-4\r\n")
            assert logged.count(b"got-2\r\n") == 1
            assert not daemon.find("logfile.gap")
        finally:
            disk.thaw()
            if a is not None:
                await a.aclose()
            await runc.kill(cid)


async def test_a_log_file_that_stops_answering_holds_only_its_logs_stream(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Was: `logs` read the log files on the event loop, and a read that waits
    # in the kernel (an NFS server gone, a dying disk; here a FUSE file whose
    # reads are held) held every console, every client and every request
    # until it returned.  fsfreeze cannot show it: a frozen disk still reads.
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir))
    holder = await PtyHolder.start(nursery)
    calm = None
    try:
        await running_session(daemon, holder, "hung")
        await running_session(daemon, holder, "calm")
        await holder.say(0, "in-the-file")
        await wait_file(log_dir / "hung.log", b"in-the-file")
        calm = await AsyncClient.connect(daemon.control_socket)
        assert isinstance(await calm.request(ev.Attach("calm", replay=0)), ev.Attached)
        async with hung_file(tmp_path, log_dir / "hung.log", b"from-the-disk\n") as disk:
            shown: list[subprocess.CompletedProcess[bytes]] = []

            async def logs() -> None:
                shown.append(await cli(daemon, "logs", "hung"))

            # A read that comes back late: the request waits, nothing else does.
            await disk.hang()
            async with trio.open_nursery() as waiting:
                waiting.start_soon(logs)
                await disk.held_read()
                for n in range(3):
                    await holder.say(1, f"still-here-{n}")
                    _, ended = await calm.read_output_until(b"still-here-%d" % n, timeout=5)
                    assert ended is None
                listed = await cli(daemon, "ls", timeout=5)
                assert listed.returncode == 0 and b"calm" in listed.stdout
                await disk.serve()
            assert shown[0].returncode == 0, shown[0].stderr
            assert shown[0].stdout == b"from-the-disk\n"
            # A read that never comes back: the request gives up, naming the file.
            await disk.hang()
            async with trio.open_nursery() as waiting:
                waiting.start_soon(logs)
                await disk.held_read()
                await holder.say(1, "and-on")
                await calm.read_output_until(b"and-on", timeout=5)
            assert shown[1].returncode == 1
            why = f"reading {log_dir / 'hung.log'}: no answer in 10 s (a hung disk?)"
            assert why.encode() in shown[1].stderr, shown[1].stderr
            await daemon.wait_event("logfile.unreadable", session="hung")
            # A disk that goes away with a read held (its server killed): the
            # read fails, and so does closing the file; only the stream ends.
            await disk.hang()
            done = trio.Event()

            async def last_logs() -> None:
                await logs()
                done.set()

            nursery.start_soon(last_logs)
            await disk.held_read()
        with trio.fail_after(10):
            await done.wait()
        assert shown[2].returncode == 1
        assert f"reading {log_dir / 'hung.log'}: ".encode() in shown[2].stderr, shown[2].stderr
        await holder.say(1, "after-all")
        await calm.read_output_until(b"after-all", timeout=5)
    finally:
        if calm is not None:
            await calm.aclose()
        await holder.aclose()


async def test_a_full_state_directory_costs_only_the_new_console_socket(
    daemon_factory: DaemonFactory, short_tmp: Path
) -> None:
    """Out of inodes where the per-session console sockets go: ``consoled socket``
    says so, plainly; the daemon serves on, and a socket removed makes room."""
    # Was: "...: [Errno 28] No space left on device".
    state = short_tmp / "st"
    intake = state / "intake"
    mount = (
        f"mkdir -p -m 0700 {state} {intake} && "
        f'mount -t tmpfs -o nr_inodes=4,mode=0700 tmpfs {intake} && exec "$@"'
    )
    daemon = await daemon_factory(
        state_dir=state,
        wrapper=["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh"],
    )
    made = []
    for n in range(8):
        result = await cli(daemon, "socket", f"full{n}")
        if result.returncode:
            break
        made.append(f"full{n}")
    assert made, "no socket could be made at all"
    assert result.returncode == 1, result
    said = result.stderr.decode()
    assert said == (
        f"consoled: cannot create a console socket at {intake}/{len(made) + 1}.sock: "
        "No space left on device\n"
    ), said
    assert [s["session"] for s in await ls_json(daemon)] == made
    assert (await cli(daemon, "rm", made[0])).returncode == 0
    assert (await cli(daemon, "socket", "after")).returncode == 0


async def test_a_removed_state_directory_is_made_again_and_served(
    daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    """``rm -rf /run/consoled`` by mistake: the daemon binds its sockets again
    (else nothing could reach it, and it holds every console), makes the
    intake directory and its lock again, and keeps every session."""
    # Was: every command said the daemon was not running; only killing it
    # (every terminal hung up) got it back, and a second daemon could start.
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "kept")
        shutil.rmtree(daemon.state_dir)
        for role in ("control", "console"):
            await daemon.wait_event("listener.rebound", listener=role)
        assert [s["session"] for s in await ls_json(daemon)] == ["kept"]
        await holder.say(0, "still-here")
        await wait_output(daemon.control_socket, "kept", b"still-here")
        assert (await cli(daemon, "socket", "new1")).returncode == 0
        second = await cli(daemon, "serve", "--state-dir", str(daemon.state_dir))
        assert second.returncode == 1 and b"already serving" in second.stderr, second
        assert await holder.hangups() == 0
    finally:
        await holder.aclose()
