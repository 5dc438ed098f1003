"""Exit statuses as docker gives them: ``exec``, ``attach``, ``wait``, ``ls``.

The daemon learns how the process on each terminal ended (consoled/io/process.py:
the terminal's session leader, a pidfd, the zombie's /proc status or the
pidfd's exit info), with real runc and crun containers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.conftest import BundleFactory, DaemonFactory, Spawn
from tests.support.cli import cli, ls_json
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime
from tests.test_exec import runtime_options


async def running_shell(
    daemon: DaemonProcess, runtime: Runtime, bundle: BundleFactory, cid: str, script: str = ""
) -> None:
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        path = await client.create_socket(cid)
    finally:
        await client.aclose()
    await runtime.run(cid, bundle(["sh", "-c", script or "exec sh"]), path)
    await daemon.wait_event("session.running", session=cid)


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["sh", "-c", "exit 7"], 7),
        (["sh", "-c", "kill -TERM $$"], 128 + 15),
        (["no-such-command"], 127),
        (["/etc/passwd"], 126),
    ],
    ids=["exit-7", "signal", "not-found", "not-executable"],
)
async def test_exec_returns_the_commands_status(
    *,
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
    command: list[str],
    status: int,
) -> None:
    cid = container_id("xs")
    await running_shell(daemon, runtime, bundle, cid)
    result = await cli(
        daemon, "exec", "--no-tty", *runtime_options(runtime, tmp_path), cid, "--", *command
    )
    assert result.returncode == status, result.stderr
    assert b"Traceback" not in result.stderr
    # Nothing is left behind: the exec's session is gone once its status was delivered.
    listed = [e["session"] for e in await ls_json(daemon)]
    assert listed == [cid]


async def test_a_failed_exec_leaves_no_log_file(
    daemon_factory: DaemonFactory,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    log_dir = tmp_path / "logs"
    daemon = await daemon_factory("--log-dir", str(log_dir))
    cid = container_id("xl")
    await running_shell(daemon, runtime, bundle, cid)
    result = await cli(
        daemon, "exec", "--no-tty", *runtime_options(runtime, tmp_path), cid, "--", "nosuchcmd"
    )
    assert result.returncode == 127, result.stderr
    assert sorted(p.name for p in log_dir.iterdir()) == [f"{cid}.log", f"{cid}.log.idx"]


async def test_exec_keep_keeps_the_session_and_wait_prints_its_status(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    tmp_path: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("xk")
    await running_shell(daemon, runtime, bundle, cid)
    result = await cli(
        daemon, "exec", "--no-tty", "--keep", *runtime_options(runtime, tmp_path), cid,
        "--", "sh", "-c", "exit 4",
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    (entry,) = [e for e in await ls_json(daemon) if e["exec"] is not None]
    assert (entry["state"], entry["exit_code"]) == ("exited", 4)
    assert entry["exited_at"]
    name = str(entry["session"])
    # As docker ps -a shows it.
    table = (await cli(daemon, "ls")).stdout.decode()
    assert re.search(rf"{re.escape(name)}\s+exited \(4\) \d+s ago", table), table
    waited = await cli(daemon, "wait", name)
    assert (waited.returncode, waited.stdout) == (0, b"4\n")


async def test_wait_blocks_until_the_session_ends(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    out_dir: Path,
    container_id: Callable[[str], str],
) -> None:
    cid = container_id("wt")
    await running_shell(
        daemon, runtime, bundle, cid, "while [ ! -e /out/go ]; do usleep 20000; done; exit 9"
    )
    done: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            result = await cli(daemon, "wait", cid, timeout=60)
            assert result.returncode == 0, result.stderr
            done.append(result.stdout)

        nursery.start_soon(waiter)
        await daemon.wait_event("client.waiting", session=cid)
        assert done == []  # it waits while the session runs
        (out_dir / "go").touch()
    assert done == [b"9\n"]


async def test_attach_returns_the_status_of_a_killed_container(
    daemon: DaemonProcess,
    runtime: Runtime,
    bundle: BundleFactory,
    attach: Spawn,
    container_id: Callable[[str], str],
) -> None:
    # Was: detach and a container killed with `runc kill KILL` both gave 0.
    cid = container_id("kill")
    await running_shell(daemon, runtime, bundle, cid)
    proc = await attach(daemon, cid)
    await runtime.kill(cid, "KILL")
    assert await proc.wait(30) == 128 + 9
