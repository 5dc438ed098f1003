"""A session's life against real runc and crun: flood, exit, retention, rm, shutdown.

Each test starts a real daemon and real containers; every wait is bounded,
either on a daemon log event or, where nothing announces the change (a
container's state, a marker file), by polling the condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest
import trio

from consoled.protocol import events as ev
from tests.conftest import BundleFactory, DaemonFactory
from tests.support.cli import cli, ls_json
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder, running_session
from tests.support.runtime import Runtime

#: Seconds a poll for a condition nothing announces may take.
POLL_TIMEOUT = 20.0
#: Bytes the flood container writes: 50 MiB.
FLOOD = 50 * 1024 * 1024
#: Scrollback of the flood test's daemon.
FLOOD_SCROLLBACK = 1024 * 1024
#: RSS the daemon may grow by beyond its scrollback (batches, queues, allocator slack).
RSS_SLACK = 32 * 1024 * 1024


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = POLL_TIMEOUT
) -> None:
    """Poll ``condition`` until it holds, for things no event announces."""
    with trio.move_on_after(timeout):
        while True:
            if await condition():
                return
            await trio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


async def wait_file(path: Path, what: str, timeout: float = POLL_TIMEOUT) -> None:
    async def exists() -> bool:
        return path.exists()

    await wait_until(exists, what, timeout)


async def container_status(runtime: Runtime, cid: str) -> str:
    return str((await runtime.state(cid))["status"])


async def wait_stopped(runtime: Runtime, cid: str) -> None:
    async def stopped() -> bool:
        return await container_status(runtime, cid) == "stopped"

    await wait_until(stopped, f"{runtime.name} container {cid} stopped")


async def entry_of(daemon: DaemonProcess, name: str) -> dict[str, object]:
    found = [e for e in await ls_json(daemon) if e["session"] == name]
    assert len(found) == 1, found
    return found[0]


async def socket_for(daemon: DaemonProcess, name: str) -> str:
    result = await cli(daemon, "socket", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


async def run_to_exit(
    daemon: DaemonProcess, runtime: Runtime, bundle_dir: Path, cid: str, timeout: float = 15.0
) -> None:
    """Run a container on its own session and wait until the session has exited."""
    await runtime.run(cid, bundle_dir, await socket_for(daemon, cid))
    await daemon.wait_event("session.exited", timeout, session=cid)


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


def assert_clean_stderr(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    return err


# --- output with nobody attached ----------------------------------------------------------


async def test_flood_unattached_finishes_with_bounded_memory(
    daemon_factory: DaemonFactory,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    daemon = await daemon_factory("--scrollback", str(FLOOD_SCROLLBACK))
    before = proc_status(daemon.pid)["VmRSS"]
    cid = container_id("flood")
    # 50 MiB with nobody attached, then a marker: the container must not block.
    b = bundle(["sh", "-c", f"head -c {FLOOD} /dev/zero | tr '\\0' x; echo END-MARK"])
    await run_to_exit(daemon, runtime, b, cid, timeout=60)
    await wait_stopped(runtime, cid)
    peak = proc_status(daemon.pid)["VmHWM"]
    assert peak - before < FLOOD_SCROLLBACK + RSS_SLACK, (before, peak)
    tail = b"END-MARK\r\n"  # the terminal's ONLCR turned \n into \r\n
    entry = await entry_of(daemon, cid)
    assert entry["state"] == "exited"
    assert entry["bytes_out"] == FLOOD + len(tail)
    assert entry["scrollback_bytes"] == FLOOD_SCROLLBACK
    result = await cli(daemon, "logs", cid)
    assert result.returncode == 0, result.stderr
    # Exactly the newest scrollback bytes of the stream, nothing older.
    assert len(result.stdout) == FLOOD_SCROLLBACK
    assert result.stdout == b"x" * (FLOOD_SCROLLBACK - len(tail)) + tail


async def test_short_lived_output_read_until_hangup(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    # The container may be gone before the daemon first reads: what it wrote
    # is still in the pty, and the daemon reads until EIO.
    b = bundle(["echo", "short-lived-marker"])
    for n in range(3):
        cid = container_id(f"short{n}")
        await run_to_exit(daemon, runtime, b, cid)
        result = await cli(daemon, "logs", cid)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"short-lived-marker\r\n"


# --- state and listing --------------------------------------------------------------------


LS_KEYS = {"session", "id", "exec", "state", "clients", "rows", "cols", "created", "bytes_out"}


async def test_session_exits_with_container_and_listing(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("ls")
    b = bundle(["sh", "-c", "echo listed; while [ ! -e /out/go ]; do sleep 0.05; done"])
    started = datetime.now().astimezone()
    await runc.run(cid, b, await socket_for(daemon, cid))
    await daemon.wait_event("session.running", session=cid)

    entry = await entry_of(daemon, cid)
    assert entry.keys() >= LS_KEYS
    assert entry["id"] == cid and entry["exec"] is None
    assert entry["state"] == "running"
    assert entry["clients"] == 0
    assert isinstance(entry["rows"], int) and isinstance(entry["cols"], int)
    assert isinstance(entry["created"], str)
    created = datetime.fromisoformat(entry["created"])
    assert created.utcoffset() is not None  # RFC 3339 carries its offset (UTC)
    assert abs((created - started).total_seconds()) < 60

    result = await cli(daemon, "ls")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.decode().splitlines()
    assert header.split()[:2] == ["SESSION", "STATE"]
    assert [r.split()[:2] for r in rows] == [[cid, "running"]]

    (out_dir / "go").touch()
    await daemon.wait_event("session.exited", session=cid)
    await wait_stopped(runc, cid)
    entry = await entry_of(daemon, cid)
    assert entry["state"] == "exited"
    assert entry["bytes_out"] == len(b"listed\r\n")
    assert isinstance(entry["exited_at"], str)
    assert datetime.fromisoformat(entry["exited_at"]) >= created
    result = await cli(daemon, "ls")
    assert [r.split()[:2] for r in result.stdout.decode().splitlines()[1:]] == [[cid, "exited"]]


async def test_retention_keeps_newest_exited(
    daemon_factory: DaemonFactory,
    runc: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    keep = 2
    daemon = await daemon_factory("--max-exited", str(keep))
    b = bundle(["echo", "bye"])
    cids = [container_id(f"keep{n}") for n in range(keep + 2)]
    for n, cid in enumerate(cids):
        await run_to_exit(daemon, runc, b, cid)
        # Oldest forgotten first, as soon as one too many has exited.
        if n >= keep:
            await daemon.wait_event("session.expired", session=cids[n - keep])
        # The check for "nothing more expired" is answered by ls, after any log line.
        listed = {str(e["session"]) for e in await ls_json(daemon)}
        expired = [e["session"] for e in daemon.find("session.expired")]
        assert expired == cids[: max(0, n + 1 - keep)]
        assert listed == set(cids[max(0, n + 1 - keep) : n + 1])
    assert {str(e["session"]) for e in await ls_json(daemon)} == set(cids[-keep:])
    # A forgotten session is gone for every command.
    result = await cli(daemon, "logs", cids[0])
    assert result.returncode == 1
    assert f"no session named {cids[0]!r}" in assert_clean_stderr(result)


# --- rm -----------------------------------------------------------------------------------


async def test_rm_exited_forgets_it(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("rmx")
    await run_to_exit(daemon, runc, bundle(["echo", "gone"]), cid)
    result = await cli(daemon, "rm", cid)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert await ls_json(daemon) == []
    # Its name is free again.
    await socket_for(daemon, cid)
    assert (await entry_of(daemon, cid))["state"] == "waiting"


async def test_rm_running_refused_then_forced_hangs_up(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("rmf")
    script = 'trap "echo HUP >/out/hup" HUP; echo up; while :; do sleep 0.1; done'
    await runtime.run(cid, bundle(["sh", "-c", script]), await socket_for(daemon, cid))
    # The master arrives before the shell runs: wait until its trap is set.
    await wait_output(daemon.control_socket, cid, b"up\r\n")

    result = await cli(daemon, "rm", cid)
    assert result.returncode == 1
    err = assert_clean_stderr(result)
    assert "running" in err and f"rm --force {cid}" in err
    assert (await entry_of(daemon, cid))["state"] == "running"
    assert not (out_dir / "hup").exists()

    result = await cli(daemon, "rm", "--force", cid)
    assert result.returncode == 0, result.stderr
    assert "terminal was closed" in assert_clean_stderr(result)
    assert await ls_json(daemon) == []
    await daemon.wait_event("session.exited", session=cid, reason="removed")
    # The master is closed: the shell on the terminal got its hangup.
    await wait_file(out_dir / "hup", "the container's shell saw SIGHUP")
    assert (out_dir / "hup").read_text() == "HUP\n"
    # The name can be used again at once.
    await socket_for(daemon, cid)


# --- logs -f ------------------------------------------------------------------------------


async def test_logs_follow_until_session_ends(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("follow")
    script = "echo first; while [ ! -e /out/go ]; do sleep 0.05; done; echo second"
    await runtime.run(cid, bundle(["sh", "-c", script]), await socket_for(daemon, cid))
    await daemon.wait_event("session.running", session=cid)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "consoled", "logs", "-f", cid],
        env=daemon.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        with trio.fail_after(30):
            while b"first\r\n" not in out:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, f"logs -f ended early: {bytes(out)!r}"
                out += chunk
            # Still following: new output arrives, then the end of the session ends it.
            assert proc.returncode is None
            (out_dir / "go").touch()
            async for chunk in proc.stdout:
                out += chunk
            rc = await proc.wait()
            err = await proc.stderr.receive_some(65536)
        assert rc == 0, err
        assert bytes(out) == b"first\r\nsecond\r\n"
        assert (await entry_of(daemon, cid))["state"] == "exited"
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


# --- daemon shutdown and limits -----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_daemon_container_survives(
    *,
    sig: signal.Signals,
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("survive")
    script = 'trap "echo HUP >/out/hup" HUP; echo up; while :; do sleep 0.1; done'
    await runc.run(cid, bundle(["sh", "-c", script]), await socket_for(daemon, cid))
    # The master arrives before the shell runs: wait until its trap is set.
    await wait_output(daemon.control_socket, cid, b"up\r\n")

    assert await daemon.stop(sig) == 0
    assert daemon.find("daemon.stopping", signal=sig.name)
    # What a service manager was told: ready with a status, then stopping.
    said = daemon.notifications
    assert said.index("READY=1") < said.index("STOPPING=1")
    assert any(line.startswith("STATUS=") for line in said)
    assert daemon.find("daemon.stopped")
    for sock in (daemon.control_socket, daemon.console_socket):
        assert not os.path.exists(sock), sock
    result = await cli(daemon, "ls")
    assert result.returncode == 1
    # What is observed: the daemon's exit closes the master, so the terminal
    # hangs up and the shell's HUP trap runs; the container goes on running.
    # (Without a trap the shell, PID 1 of its namespace, would not even see
    # the SIGHUP: the kernel drops default-action signals to a namespace init.)
    await wait_file(out_dir / "hup", "the container's shell saw SIGHUP")
    assert await container_status(runc, cid) == "running"


async def test_sighup_is_ignored_and_the_console_lives_on(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    # A closed terminal or a logrotate postrotate sends SIGHUP: that must not
    # hang up every container's console.
    cid = container_id("hup")
    script = 'trap "echo HUP >/out/hup" HUP; echo up; while read x; do echo "got-$x"; done'
    await runc.run(cid, bundle(["sh", "-c", script]), await socket_for(daemon, cid))
    await wait_output(daemon.control_socket, cid, b"up\r\n")
    assert daemon.proc is not None
    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_event("daemon.sighup_ignored")
    attach = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await attach.request(ev.Attach(cid, replay=0))
        assert isinstance(reply, ev.Attached)
        assert reply.state is ev.SessionState.RUNNING
        await attach.send(ev.Input(b"after-hup\r"))
        out, ended = await attach.read_output_until(b"got-after-hup")
        assert ended is None, out
    finally:
        await attach.aclose()
    assert daemon.proc.returncode is None
    assert not (out_dir / "hup").exists()
    assert not daemon.find("daemon.stopping")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2], ids=["SIGUSR1", "SIGUSR2"])
async def test_sigusr_is_logged_and_the_consoles_live_on(
    sig: signal.Signals, daemon: DaemonProcess, nursery: trio.Nursery
) -> None:
    """``kill -USR1``, which many daemons take for "reopen your logs", is not a stop."""
    # Was: the default action, the daemon killed and every terminal hung up.
    holder = await PtyHolder.start(nursery)
    try:
        await running_session(daemon, holder, "u1")
        daemon.send_signal(sig)
        await daemon.wait_event("daemon.signal_ignored", signal=sig.name)
        await holder.say(0, "after-the-signal")
        await wait_output(daemon.control_socket, "u1", b"after-the-signal")
        assert daemon.proc is not None and daemon.proc.returncode is None
        assert await holder.hangups() == 0
    finally:
        await holder.aclose()


async def test_nofile_soft_limit_raised_to_hard(short_tmp: Path, nursery: trio.Nursery) -> None:
    soft, hard = 256, 4096
    daemon = DaemonProcess(short_tmp / "s", nofile=(soft, hard))
    try:
        await daemon.start(nursery)
        limits = Path(f"/proc/{daemon.pid}/limits").read_text().splitlines()
        (line,) = [x for x in limits if x.startswith("Max open files")]
        assert line.split()[3:5] == [str(hard), str(hard)], line
        (ready,) = daemon.find("daemon.ready")
        assert ready["nofile"] == hard
    finally:
        with trio.CancelScope(shield=True):
            rc = await daemon.stop()
    assert rc == 0
    assert not os.path.exists(daemon.control_socket)
    assert daemon.internal_errors() == []
