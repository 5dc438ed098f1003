"""The systemd user manager harness, and the fd store mechanism it exists for.

The main test is the scenario later tests build on with consoled itself: a
``Type=notify`` service stores a pty master with ``FDSTORE=1`` and
``FDNAME=pty``, is killed with SIGKILL, is restarted by ``Restart=always``,
and gets the master back in ``LISTEN_FDS``/``LISTEN_FDNAMES``, with the
output the terminal wrote while nobody was reading, and the terminal never
saw a hangup.  The others check that the harness leaves nothing behind,
even when the test inside it fails.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support import fdstore_service, ptyserver
from tests.support.throwaway import processes_in, wait_exited
from tests.support.usermanager import UserManager

pytestmark = pytest.mark.systemd

#: Seconds for one answer from the root helper.
HELPER_TIMEOUT = 10.0


class Helper:
    """The root ptyserver (tests.support.ptyserver), driven line by line."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout
        self.buffer = b""

    async def line(self, timeout: float = HELPER_TIMEOUT) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                chunk = await self.stdout.receive_some()
                assert chunk, f"helper exited ({await self.proc.wait()}) mid-conversation"
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    async def ask(self, command: str) -> str:
        await self.stdin.send_all(command.encode() + b"\n")
        return await self.line()


def results(path: Path) -> list[dict[str, Any]]:
    """The JSON lines the stand-in service appended, one per start."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_fd_store_gives_the_master_back_after_kill(
    user_manager: UserManager, service_python: Path
) -> None:
    um = user_manager
    script = um.home / "fdstore_service.py"
    shutil.copy(fdstore_service.__file__, script)
    helper_socket = um.home / "helper.sock"
    result_file = um.home / "results.jsonl"
    helper = Helper(
        await um.spawn_root([sys.executable, ptyserver.__file__, str(helper_socket), str(um.uid)])
    )
    assert await helper.line() == "listening"

    unit = "fdstore-standin.service"
    await um.systemd_run(
        unit,
        [str(service_python), str(script), str(helper_socket), str(result_file)],
        properties=[
            "Type=notify",
            "FileDescriptorStoreMax=16",
            "Restart=always",
            "RestartSec=100ms",
        ],
    )
    # systemd-run returned: READY=1 arrived, after FDSTORE=1 on the same socket.
    assert await helper.line() == "sent"
    assert await um.show(unit, "NFileDescriptorStore") == "1"
    [first] = results(result_file)
    assert not first["restored"] and first["isatty"]

    # Output nobody reads while the service is down stays in the pty.
    text = b"written before the crash\r\n"
    assert await helper.ask(f"write {text.hex()}") == "wrote"
    old_pid = await um.main_pid(unit)
    assert old_pid == first["pid"]
    os.kill(old_pid, signal.SIGKILL)

    await um.wait_property(unit, "NRestarts", "1")
    await um.wait_active(unit)
    new_pid = await um.main_pid(unit)
    assert new_pid not in (0, old_pid)
    [_, second] = results(result_file)
    assert second["pid"] == new_pid
    assert second["restored"] and second["isatty"]
    assert second["names"] == ["pty"]
    assert second["data"].encode("latin-1") == text
    assert await um.show(unit, "NFileDescriptorStore") == "1"
    assert await helper.ask("status") == "ok"  # the slave never saw a hangup


async def test_service_python_runs_as_the_user(
    user_manager: UserManager, service_python: Path
) -> None:
    result = await user_manager.run(
        [str(service_python), "-c", "import consoled, trio, msgpack, structlog, os;"
         "print(os.getuid(), consoled.__file__)"]
    )  # fmt: skip
    uid, where = result.stdout.decode().split()
    assert int(uid) == user_manager.uid
    assert where.startswith(str(service_python.parent.parent))  # installed, not this checkout


async def test_run_is_private_to_the_namespace(user_manager: UserManager) -> None:
    """/run/systemd/system and the runtime dir exist inside only, on a tmpfs."""
    um = user_manager
    host_has_it = os.path.exists("/run/systemd/system")
    inside = await um.run_root(["stat", "-f", "-c", "%T", "/run/systemd/system"])
    assert inside.stdout.decode().strip() == "tmpfs"
    runtime = await um.run(["stat", "-c", "%U %a", str(um.runtime_dir)])
    assert runtime.stdout.decode().split() == [um.user, "700"]
    assert um.system_state == "running"
    assert os.path.exists("/run/systemd/system") == host_has_it
    assert not os.path.exists(um.runtime_dir)


def assert_gone(user: str, home: Path, cgroup: Path) -> None:
    """Nothing of a throw-away user is left: cgroups (so processes), user, home."""
    assert not cgroup.exists(), processes_in(cgroup)
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    assert not home.exists()


async def test_nothing_is_left_behind_even_after_a_failure() -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):  # noqa: PT012 -- the failure must happen with the manager up
        async with UserManager.start() as um:
            await um.systemd_run("sleeper", ["/bin/sleep", "600"])
            helper = await um.spawn_root(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=None)
            assert len(processes_in(um.account.cgroup)) >= 3  # manager, service, helper
            raise Boom
    assert um.process is not None and um.process.returncode is not None
    assert helper.returncode is not None
    assert_gone(um.user, um.home, um.account.cgroup)


# Starts a manager and a service, says who it is, then waits to be killed.
_DOOMED = """
import json, trio
from tests.support.usermanager import UserManager

async def main():
    async with UserManager.start() as um:
        await um.systemd_run("sleeper", ["/bin/sleep", "600"])
        print(json.dumps({"user": um.user, "home": str(um.home),
              "cgroup": str(um.account.cgroup), "guardian": um.account.guardian_pid}), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_the_guardian_cleans_up_after_a_killed_test() -> None:
    repo = Path(__file__).resolve().parent.parent
    doomed = await trio.lowlevel.open_process(
        [sys.executable, "-c", _DOOMED], cwd=str(repo), stdout=subprocess.PIPE
    )
    try:
        assert doomed.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await doomed.stdout.receive_some()
                assert chunk, "the doomed test exited before it was up"
                line += chunk
    finally:
        doomed.kill()  # SIGKILL: no clean-up of its own
        await doomed.wait()
        if doomed.stdout is not None:
            await doomed.stdout.aclose()
    info = json.loads(line)
    with trio.fail_after(20):
        await wait_exited([info["guardian"]])
    assert_gone(info["user"], Path(info["home"]), Path(info["cgroup"]))
