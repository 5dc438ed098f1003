"""The command lines container managers really use, against the well-known socket.

Real runc and crun (each test runs with both), pointed at the daemon's
``console.sock``: the daemon must name every session from the runtime's own
command line, whatever options surround it.  ``restore`` cannot run here
(CRIU: see tests/support/fakeruntime.py), so its naming is tested with a
process that hands over a master under restore's exact command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from consoled.protocol import events as ev
from tests.conftest import BundleFactory, DaemonFactory
from tests.support import fakeruntime
from tests.support.cli import cli, logs
from tests.support.client import AsyncClient, wait_output
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime


async def names(daemon: DaemonProcess) -> dict[str, str]:
    """Every session and its state."""
    result = await cli(daemon, "ls", "--json")
    assert result.returncode == 0, result.stderr
    return {e["session"]: e["state"] for e in json.loads(result.stdout)}


async def test_create_then_start_with_pid_file_root_and_debug(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("cs")
    pid_file = tmp_path / "init.pid"
    b = bundle(["sh", "-c", "echo created-then-started; exec sleep 600"])
    # Global options before the subcommand (--debug, and the fixture's --root).
    runtime.started.append(cid)
    await runtime.call(
        "--debug", "create", "--console-socket", daemon.console_socket,
        "--pid-file", str(pid_file), "--bundle", str(b), cid,
    )  # fmt: skip
    await daemon.wait_event("intake.named", session=cid, via="cmdline")
    assert (await names(daemon))[cid] == "running"
    await runtime.start(cid)
    await wait_output(daemon.control_socket, cid, b"created-then-started")
    assert pid_file.read_text().strip().isdigit()


async def test_run_detached_with_options_after_the_id(
    daemon: DaemonProcess,
    runc: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    # runc moves known options that follow the id in front of it.
    cid = container_id("after")
    b = bundle(["sh", "-c", "echo options-after-the-id; exec sleep 600"])
    runc.started.append(cid)
    await runc.call("run", "-b", str(b), cid, "--detach", "--console-socket", daemon.console_socket)
    await daemon.wait_event("intake.named", session=cid, via="cmdline")
    await wait_output(daemon.control_socket, cid, b"options-after-the-id")


async def test_exec_with_a_process_file(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("pj")
    await runtime.run(cid, bundle(["sh", "-c", "exec sleep 600"]), daemon.console_socket)
    await daemon.wait_event("intake.named", session=cid)
    process = {
        "terminal": True,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "echo from-process-json; exec sleep 600"],
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
    }
    spec = tmp_path / "process.json"
    spec.write_text(json.dumps(process))
    await runtime.call(
        "exec", "-d", "-t", "--console-socket", daemon.console_socket, "-p", str(spec), cid
    )
    # No command on the command line: the exec is named after the process file.
    event = await daemon.wait_event("intake.named", count=2)
    name = event["session"]
    assert name.startswith(f"{cid}/")
    await wait_output(daemon.control_socket, name, b"from-process-json")


async def test_restore_is_named_like_run(
    daemon: DaemonProcess, nursery: trio.Nursery, tmp_path: Path, runtime: Runtime
) -> None:
    # runc 1.1.5 (libcontainer's "orphan-pts-master") and crun send the restored
    # init's master to --console-socket: the session is the container's.
    cid = "restored1"
    argv = [
        runtime.name, "--root", str(runtime.root), "restore", "-d",
        "--console-socket", daemon.console_socket, "--image-path", str(tmp_path / "ck"),
        "--bundle", str(tmp_path), cid,
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(
        [sys.executable, fakeruntime.__file__, "x" * 400, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(20):
            assert (await proc.stdout.receive_some()).startswith(b"sent")
        named = await daemon.wait_event("intake.named", session=cid)
        assert named["via"] == "cmdline"
        await wait_output(daemon.control_socket, cid, b"restored-and-talking")
        assert (await names(daemon))[cid] == "running"
    finally:
        assert proc.stdin is not None
        await proc.stdin.aclose()
        with trio.fail_after(20):
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    await daemon.wait_event("session.exited", session=cid)


async def test_a_reused_id_is_a_new_generation(
    daemon_factory: DaemonFactory,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir))
    cid = container_id("gen")
    wk = daemon.console_socket
    await runtime.run(cid, bundle(["sh", "-c", "echo first-generation; read x"]), wk)
    await daemon.wait_event("intake.named", session=cid)
    await runtime.exec(cid, ["sh", "-c", "echo first-exec; read x"], wk)
    exec_named = await daemon.wait_event("intake.named", count=2)
    old_exec = exec_named["session"]
    await wait_output(daemon.control_socket, old_exec, b"first-exec")
    await runtime.kill(cid)
    await daemon.wait_event("session.exited", session=cid)
    await daemon.wait_event("session.exited", session=old_exec)
    await runtime.delete(cid)
    assert set(await names(daemon)) == {cid, old_exec}

    # The same id, a new container: its sessions are a new generation.
    await runtime.run(cid, bundle(["sh", "-c", "echo second-generation; read x"]), wk)
    await daemon.wait_event("intake.named", session=cid, count=2)
    await wait_output(daemon.control_socket, cid, b"second-generation")
    listed = await names(daemon)
    assert listed == {cid: "running"}  # never an old exec under the new container
    for retired in (cid, old_exec):
        assert daemon.find("session.replaced", session=retired)
    # Both generations' logs, apart.
    stem = old_exec.replace("/", "@")
    assert b"first-generation" in (log_dir / f"{cid}~1.log").read_bytes()
    assert b"first-exec" in (log_dir / f"{stem}~1.log").read_bytes()
    assert b"second-generation" in (log_dir / f"{cid}.log").read_bytes()
    assert b"first-generation" not in (log_dir / f"{cid}.log").read_bytes()
    assert b"second-generation" in await logs(daemon, cid)
    # An exec into the new container starts at sh-1 again.
    await runtime.exec(cid, ["sh", "-c", "echo second-exec; read x"], wk)
    second = await daemon.wait_event("intake.named", count=4)
    assert second["session"] == old_exec


async def test_a_runtime_that_fails_before_sending_is_logged_as_such(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    # runc run with a configuration it rejects: it connects to the console
    # socket first, then fails its own validation and closes without sending.
    cid = container_id("bad")
    b = bundle(["sh"])
    config = json.loads((b / "config.json").read_text())
    config["linux"].setdefault("resources", {})["cpu"] = {"period": 1, "quota": 1}
    (b / "config.json").write_text(json.dumps(config))
    result = await runtime.call(
        "run", "-d", "--console-socket", daemon.console_socket, "--bundle", str(b), cid,
        check=False,
    )  # fmt: skip
    runtime.started.append(cid)
    assert result.returncode != 0
    event = await daemon.wait_event("intake.rejected", kind="closed_early")
    assert event["level"] == "info"
    assert event["argv"][0].endswith(runtime.name) and cid in event["argv"]
    assert "failed before it had a console" in event["error"]
    # Nothing else happened: no session, no warning.
    assert await names(daemon) == {}
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        assert isinstance(await client.request(ev.GetInfo()), ev.DaemonInfo)
    finally:
        await client.aclose()
