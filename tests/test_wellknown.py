"""The well-known console socket (issue 6): sessions named from whoever connects.

Real runc and crun are pointed at the daemon's ``console.sock`` with the options
people actually use, before and after the container id, and every master must
land under the exact name: ``ID`` for run/create, ``ID/<command basename>-N`` for
exec.  A client that is not a runtime is held under ``unnamed-N`` with a warning
saying why, and ``consoled rename`` fixes it; a second master for a live
container id is held under ``ID+2``, never merged.

How the daemon finds the container (see consoled/server/wellknown.py):

- runc (run, create, exec) and crun run/create connect tens of milliseconds
  before they send the master (runc even hands the connection to ``runc init``),
  so the daemon reads the connecting process's /proc/PID/cmdline in time.
- ``crun exec -d`` (1.8.1) first takes the master from the container over a
  socketpair, then connects, sends and exits, all within about a millisecond: in
  a test loop the daemon found it already gone (cmdline empty or /proc/PID
  missing) for about half of the execs, even accepting and reading at once.  The
  daemon then asks the master who is on the terminal (``TIOCGSID``): that
  process is already inside the container, and if its mount namespace is the one
  of the process on another running session of one container, the exec is named
  in that container, after the command that process runs.  So crun exec names
  are exact when the container already has a session on this daemon (its init's
  terminal, or an earlier exec still running) and the exec'd program has not
  exec'd another by then (``sh -c 'exec sleep 1d'`` may be named ``sleep-N``,
  so the tests use commands that stay themselves); when the container has no
  session and crun is gone first, the master is held as ``unnamed-N`` with the
  warning "process N exited before it could be identified"
  (:func:`test_exec_into_container_without_a_session`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from consoled.protocol import events as ev
from tests.conftest import BundleFactory
from tests.support.cli import cli, logs
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.runtime import CRUN_WRAPPER, RUNTIME_TIMEOUT, Runtime, RuntimeFailed

#: Seconds the unknown client may take to exit once told.
CLIENT_TIMEOUT = 15.0


async def call(runtime: Runtime, *args: str) -> None:
    """Run the runtime with exactly ``args`` (no ``--root`` added: the test places it)."""
    argv = (
        ["unshare", "-m", "sh", "-c", CRUN_WRAPPER, "crun"] if runtime.name == "crun" else ["runc"]
    )
    argv += args
    with trio.fail_after(RUNTIME_TIMEOUT):
        result = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL
        )
    if result.returncode != 0:
        raise RuntimeFailed(argv, result)


async def named(daemon: DaemonProcess, count: int) -> dict[str, Any]:
    """The ``count``-th ``intake.named`` event: which name the daemon gave a master."""
    return await daemon.wait_event("intake.named", count=count)


async def assert_named(
    daemon: DaemonProcess, count: int, expected: str, vias: Collection[str] = ("cmdline",)
) -> None:
    """The ``count``-th master was named ``expected``, without a warning, found as ``vias``."""
    event = await named(daemon, count)
    assert event["session"] == expected, event
    assert event["level"] == "info" and "why" not in event, event
    assert event["via"] in vias, event


def exec_vias(runtime: Runtime) -> tuple[str, ...]:
    """How an exec's container may be found: crun exec is often gone before its cmdline is read."""
    return ("cmdline", "terminal") if runtime.name == "crun" else ("cmdline",)


async def wait_output(daemon: DaemonProcess, name: str, needle: bytes, typed: str = "") -> bytes:
    """Attach to ``name`` (whole scrollback), type ``typed``, collect output until ``needle``."""
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await client.request(ev.Attach(name, rows=24, cols=80))
        assert isinstance(reply, ev.Attached), reply
        if typed:
            await client.send(ev.Input(typed.encode() + b"\r"))
        out, ended = await client.read_output_until(needle)
        assert needle in out, (name, out, ended)
        return out
    finally:
        await client.aclose()


async def session_states(daemon: DaemonProcess) -> dict[str, str]:
    result = await cli(daemon, "ls", "--json")
    assert result.returncode == 0, result.stderr
    return {e["session"]: e["state"] for e in json.loads(result.stdout)}


async def test_run_then_two_execs_are_named_and_isolated(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    cid = container_id("wk-run")
    sock, root, log = daemon.console_socket, str(runtime.root), str(tmp_path / "rt.log")
    b = str(bundle(["sh"]))
    runtime.started.append(cid)
    if runtime.name == "runc":
        # Global options in any order; runc moves the options after the id in front.
        await call(runtime, "--debug", "--log", log, "--root=" + root,
                   "run", "--bundle", b, cid, "-d", "--console-socket=" + sock)  # fmt: skip
    else:
        await call(runtime, "--log", log, "--debug", "--root=" + root,
                   "run", "-d", "--console-socket=" + sock, "--bundle", b, cid)  # fmt: skip
    await assert_named(daemon, 1, cid)
    # The init's session is what lets a crun exec be named when crun is gone first.
    for n in (1, 2):
        await call(runtime, "--root", root, "exec", "-d", "-t", "--console-socket", sock, cid, "sh")
        await assert_named(daemon, 1 + n, f"{cid}/sh-{n}", exec_vias(runtime))
    # Input to one exec reaches that shell only (the results differ from what is typed).
    await wait_output(daemon, f"{cid}/sh-1", b"42-one", "echo $((6*7))-one")
    await wait_output(daemon, f"{cid}/sh-2", b"48-two", "echo $((6*8))-two")
    one, two = await logs(daemon, f"{cid}/sh-1"), await logs(daemon, f"{cid}/sh-2")
    assert b"42-one" in one and b"two" not in one
    assert b"48-two" in two and b"one" not in two
    assert b"one" not in await logs(daemon, cid) and b"two" not in await logs(daemon, cid)
    states = await session_states(daemon)
    assert states == dict.fromkeys((cid, f"{cid}/sh-1", f"{cid}/sh-2"), "running")


async def test_create_start_and_execs_with_options(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    cid = container_id("wk-create")
    sock, root, log = daemon.console_socket, str(runtime.root), str(tmp_path / "rt.log")
    b = str(bundle(["sh", "-c", "echo started-$(hostname); exec sh"]))
    pid_files = [tmp_path / f"{n}.pid" for n in range(3)]
    runtime.started.append(cid)
    if runtime.name == "runc":
        await call(runtime, "--root", root, "--log", log,
                   "create", "--bundle", b, cid, "--console-socket", sock,
                   "--pid-file", str(pid_files[0]))  # fmt: skip
    else:
        await call(runtime, "--root", root, "--log", log,
                   "create", "--console-socket", sock, "--pid-file", str(pid_files[0]),
                   "--bundle", b, cid)  # fmt: skip
    # The master arrives at create, before the container runs.
    await assert_named(daemon, 1, cid)
    assert (await session_states(daemon)) == {cid: "running"}
    await call(runtime, "--root", root, "start", cid)
    await wait_output(daemon, cid, b"started-consoled-test")

    g = ["--root", root]
    tty = ["--detach", "--tty"] if runtime.name == "runc" else ["-dt"]  # crun clusters
    execs: list[tuple[list[str], str]] = [
        (["--log", log, "--debug", *g, "exec", "--env", "MARK=two", "--cwd", "/tmp",
          "--user", "0:0", "--pid-file", str(pid_files[1]), "-d", "-t",
          "--console-socket=" + sock, cid, "/bin/sh"], "sh-1"),
        ([*g, "exec", "-t", "-d", "--console-socket", sock, "--env", "X=1", cid,
          "/bin/sleep", "600"], "sleep-1"),
        # After the id everything is the command's, options included.
        ([*g, "--debug", "exec", "-d", "-t", "--console-socket", sock, cid,
          "/bin/sh", "-c", "read x", "--console-socket", "/elsewhere", "-d"], "sh-2"),
        ([*g, "exec", *tty, "--pid-file", str(pid_files[2]), "--console-socket=" + sock, cid,
          "sleep", "600"], "sleep-2"),
    ]  # fmt: skip
    for count, (args, name) in enumerate(execs, start=2):
        await call(runtime, *args)
        await assert_named(daemon, count, f"{cid}/{name}", exec_vias(runtime))
    # The name leads to the process started with those options.
    await wait_output(daemon, f"{cid}/sh-1", b"two-/tmp-0", "echo $MARK-$PWD-$(id -u)")
    for path in pid_files:
        assert int(path.read_text()) > 0
    states = await session_states(daemon)
    names = [cid] + [f"{cid}/{name}" for _, name in execs]
    assert states == dict.fromkeys(names, "running")


async def test_live_container_id_is_not_merged(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The same id under another --root is another container: its master gets ID+2."""
    cid = container_id("wk-dup")
    other = Runtime(runtime.name, tmp_path / "root2")
    other.root.mkdir()
    try:
        await runtime.run(cid, bundle(["sh", "-c", "echo first; exec sh"]), daemon.console_socket)
        await assert_named(daemon, 1, cid)
        await other.run(cid, bundle(["sh", "-c", "echo second; exec sh"]), daemon.console_socket)
        event = await named(daemon, 2)
        assert event["session"] == f"{cid}+2", event
        assert event["level"] == "warning", event
        assert event["why"] == (
            f"container {cid} already has a running session; this master is held as {cid}+2"
        )
        await wait_output(daemon, cid, b"first")
        await wait_output(daemon, f"{cid}+2", b"second")
        assert b"second" not in await logs(daemon, cid)
        assert (await session_states(daemon)) == {cid: "running", f"{cid}+2": "running"}
    finally:
        await other.cleanup()


async def test_exec_into_container_without_a_session(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    container_id: Callable[[str], str],
) -> None:
    """An exec into a container whose init has no terminal: exact for runc; see the
    module docstring for crun, which may be gone before it is identified."""
    cid = container_id("wk-bare")
    # No terminal: init lets go of the runtime's stdio, which the test reads to EOF.
    args = ["sh", "-c", "exec </dev/null >/dev/null 2>&1; exec sleep 600"]
    await runtime.run(cid, bundle(args, terminal=False), None)
    await runtime.exec(cid, ["/bin/sleep", "600"], daemon.console_socket)
    event = await named(daemon, 1)
    if runtime.name == "runc" or event["session"] != "unnamed-1":
        assert event["session"] == f"{cid}/sleep-1", event
        assert event["level"] == "info" and event["via"] == "cmdline", event
    else:
        assert event["level"] == "warning", event
        assert event["why"] == (
            "cannot name the session: "
            f"process {event['peer_pid']} exited before it could be identified"
        )
    assert (await session_states(daemon)) == {event["session"]: "running"}


#: Opens a pty, writes to it, sends the master to argv[1] and waits for stdin to close.
UNKNOWN_CLIENT = r"""
import os, socket, sys
master, slave = os.openpty()
os.write(slave, b"hello-from-unnamed\r\n")
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.connect(sys.argv[1])
    socket.send_fds(s, [b" "], [master])
sys.stdin.read()
"""


async def test_unknown_client_is_unnamed_then_renamed(daemon: DaemonProcess) -> None:
    argv = [sys.executable, "-c", UNKNOWN_CLIENT, daemon.console_socket]
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdin is not None
        event = await named(daemon, 1)
        assert event["session"] == "unnamed-1", event
        assert event["level"] == "warning", event
        runtime = os.path.basename(sys.executable)
        assert event["why"] == (
            f"cannot name the session from the command line of process {proc.pid}: "
            f"unknown runtime {runtime!r} "
            f"(argv[0] is {sys.executable!r}); expected runc or crun"
        )
        assert event["peer_pid"] == proc.pid
        result = await cli(daemon, "rename", "unnamed-1", "mine")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"mine\n"
        await wait_output(daemon, "mine", b"hello-from-unnamed")
        assert b"hello-from-unnamed" in await logs(daemon, "mine")
        assert (await session_states(daemon)) == {"mine": "running"}
        result = await cli(daemon, "logs", "unnamed-1")
        assert result.returncode == 1 and b"unnamed-1" in result.stderr
        await proc.stdin.aclose()
        with trio.fail_after(CLIENT_TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(CLIENT_TIMEOUT):
                await proc.wait()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "console socket:  {}\n"),
        (("--console-socket",), "{}\n"),
    ],
    ids=["human", "path-only"],
)
async def test_info_prints_the_console_socket(
    daemon: DaemonProcess, args: Sequence[str], expected: str
) -> None:
    result = await cli(daemon, "info", *args)
    assert result.returncode == 0, result.stderr
    assert expected.format(daemon.console_socket) in result.stdout.decode()
    assert os.path.exists(daemon.console_socket)
    result = await cli(daemon, "info", "--json")
    assert json.loads(result.stdout)["console_socket"] == daemon.console_socket
