"""The README's quick start, run as written: its lines typed into a shell, as root and as a user.

The commands are read from README.md, so this breaks when the README changes
and no longer works.  Each line is typed into ``sh`` on a real pty, and its
exit status checked; ``consoled attach`` is driven as a person would (a
command typed into the container's shell, then ctrl-p ctrl-q).  Two changes
are made for the test's sake: ``consoled`` is the checkout's, and the
container id ``web1`` becomes a unique one (concurrent runs must not share a
container or a cgroup).  As root, ``runc`` is run with a state root of the
test's own through a wrapper on ``PATH``.  As another user, everything runs
as that user, a throw-away one: its own daemon, and rootless runc, which
works here (unprivileged user namespaces are allowed).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import DaemonFactory
from tests.support.accounts import Account, Accounts, setpriv
from tests.support.daemon import DaemonProcess
from tests.support.ptyproc import PtyProcess
from tests.support.runtime import new_container_id

README = Path(__file__).resolve().parent.parent / "README.md"
DETACH = b"\x10\x11"
#: Seconds one typed line may take (the first runc run of a fresh bundle included).
LINE_TIMEOUT = 60.0


def quick_start() -> list[str]:
    """The command lines of the README's quick start block, without their comments."""
    text = README.read_text()
    section = text.split("\n## Quick start with runc\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "no sh block in the quick start"
    lines = [re.sub(r"\s+#.*$", "", line) for line in match.group(1).splitlines()]
    return [line for line in lines if line]


class Shell:
    """A shell on a pty, typed into line by line."""

    def __init__(self, proc: PtyProcess) -> None:
        self.proc = proc

    async def run(self, line: str) -> None:
        """Type ``line``; it must exit 0."""
        self.proc.write(line.encode() + b"\n")
        self.proc.write(b'echo "@@$?@@"\n')
        status = await self.proc.expect(re.compile(rb"@@(\d+)@@"), LINE_TIMEOUT)
        assert status.endswith(b"@@0@@"), f"{line!r} failed:\n{status.decode(errors='replace')}"


async def walk_through(shell: Shell, cid: str) -> None:
    """Every line of the quick start, with web1 as ``cid``; attach is used, then detached."""
    lines = [re.sub(r"\bweb1\b", cid, line) for line in quick_start()]
    assert any(line.startswith("runc run") for line in lines), lines
    attach = f"consoled attach {cid}"
    logs = f"consoled logs {cid}"
    assert lines[-2:] == [attach, logs], lines
    for line in lines[:-2]:
        await shell.run(line)
    shell.proc.write(attach.encode() + b"\n")
    await shell.proc.expect(b"# ", LINE_TIMEOUT)  # the container's shell
    shell.proc.write(b"echo quick-$((6*7))\r")
    await shell.proc.expect(b"quick-42")
    shell.proc.write(DETACH)
    await shell.proc.expect(f"detached from {cid}; reattach with: consoled attach {cid}".encode())
    await shell.run("true")  # attach exited 0
    shell.proc.write(logs.encode() + b"\n")
    await shell.proc.expect(b"quick-42")
    await shell.run("true")


@pytest.fixture
async def shells(nursery: trio.Nursery) -> AsyncIterator[list[PtyProcess]]:
    started: list[PtyProcess] = []
    try:
        yield started
    finally:
        with trio.CancelScope(shield=True):
            for proc in started:
                proc.close()
                with trio.move_on_after(10):
                    await proc.proc.wait()


async def test_quick_start_as_root(
    daemon: DaemonProcess, tmp_path: Path, nursery: trio.Nursery, shells: list[PtyProcess]
) -> None:
    cid = new_container_id("qs")
    bin_dir, work, runc_root = tmp_path / "bin", tmp_path / "work", tmp_path / "runc"
    for path in (bin_dir, work):
        path.mkdir()
    runc = shutil.which("runc")
    assert runc is not None
    (bin_dir / "runc").write_text(f'#!/bin/sh\nexec {runc} --root {runc_root} "$@"\n')
    (bin_dir / "runc").chmod(0o755)
    env = daemon.env()  # $CONSOLED_STATE_DIR: the test's daemon
    env["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}"
    env["PS1"] = "$ "
    proc = await PtyProcess.spawn(nursery, ["sh"], env=env, cwd=str(work))
    shells.append(proc)
    try:
        await walk_through(Shell(proc), cid)
        await daemon.wait_event("session.running", session=cid)
    finally:
        with trio.move_on_after(30) as scope:
            scope.shield = True
            await trio.run_process([runc, "--root", str(runc_root), "delete", "-f", cid],
                                   check=False)  # fmt: skip


@pytest.fixture(scope="module")
def user() -> Iterator[Account]:
    accounts = Accounts()
    try:
        yield accounts.user("readme")
    finally:
        accounts.close()


async def test_quick_start_as_another_user(
    *,
    daemon_factory: DaemonFactory,
    user: Account,
    service_python: Path,
    short_tmp: Path,
    nursery: trio.Nursery,
    shells: list[PtyProcess],
) -> None:
    cid = new_container_id("qsu")
    short_tmp.chmod(0o711)  # root's, searchable: the user's directories go in it
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    os.chown(home, user.uid, user.gid)
    runtime_dir = home / "run"
    state_dir = runtime_dir / "consoled"
    as_user = setpriv(user)
    for path in (runtime_dir, home / "work"):
        await trio.run_process([*as_user, "mkdir", "-m", "0700", str(path)])
    # The user's own daemon, with its state in $CONSOLED_STATE_DIR.
    daemon = await daemon_factory(
        state_dir=state_dir, python=service_python, user=(user.uid, user.gid)
    )
    env = {
        "PATH": f"{service_python.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(home),
        "USER": user.name,
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "CONSOLED_STATE_DIR": str(state_dir),
        "PS1": "$ ",
        "TERM": "xterm",
    }
    proc = await PtyProcess.spawn(nursery, [*as_user, "sh"], env=env, cwd=str(home / "work"))
    shells.append(proc)
    try:
        await Shell(proc).run(f'test "$(id -u)" = {user.uid}')  # not root
        await walk_through(Shell(proc), cid)
        await daemon.wait_event("session.running", session=cid)
    finally:
        with trio.move_on_after(30) as scope:
            scope.shield = True
            await trio.run_process([*as_user, "runc", "delete", "-f", cid], env=env, check=False)
