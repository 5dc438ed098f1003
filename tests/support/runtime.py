"""Real runc and crun, driven from trio, with every container cleaned up.

crun 1.8 refuses these machines' hybrid cgroup layout unless the cgroup2
mount at /sys/fs/cgroup/unified is hidden, so every crun call runs as
``unshare -m sh -c 'umount /sys/fs/cgroup/unified; exec crun ...'``: the
shell execs crun, so the process that connects to a console socket is crun
itself.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

_ids = itertools.count(1)
CRUN_WRAPPER = 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"'
#: Seconds any runtime command may take.
RUNTIME_TIMEOUT = 60.0


class RuntimeFailed(Exception):
    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[bytes]) -> None:
        self.returncode = result.returncode
        self.stderr = result.stderr.decode(errors="replace")
        super().__init__(f"{' '.join(argv)} exited {result.returncode}: {self.stderr.strip()}")


def new_container_id(tag: str = "c") -> str:
    return f"ct{os.getpid()}-{next(_ids)}-{tag}"


class Runtime:
    """One OCI runtime with its own state root.

    Args:
        name: ``runc`` or ``crun``.
        root: the runtime's ``--root`` (per test session, so ids never clash).
    """

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.started: list[str] = []

    def argv(self, *args: str) -> list[str]:
        """The full command line for ``RUNTIME --root ROOT ARGS``."""
        if self.name == "crun":
            return [
                "unshare",
                "-m",
                "sh",
                "-c",
                CRUN_WRAPPER,
                "crun",
                "--root",
                str(self.root),
                *args,
            ]
        return [self.name, "--root", str(self.root), *args]

    async def call(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = self.argv(*args)
        with trio.fail_after(RUNTIME_TIMEOUT):
            result = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        if check and result.returncode != 0:
            raise RuntimeFailed(argv, result)
        return result

    async def run(self, cid: str, bundle: Path, console_socket: str | None, *extra: str) -> None:
        """``run -d`` (with a terminal when ``console_socket`` is given)."""
        self.started.append(cid)
        sock = ["--console-socket", console_socket] if console_socket else []
        await self.call("run", "-d", *sock, *extra, "--bundle", str(bundle), cid)

    async def create(self, cid: str, bundle: Path, console_socket: str, *extra: str) -> None:
        self.started.append(cid)
        await self.call(
            "create", "--console-socket", console_socket, *extra, "--bundle", str(bundle), cid
        )

    async def start(self, cid: str) -> None:
        await self.call("start", cid)

    async def exec(
        self, cid: str, args: Sequence[str], console_socket: str | None, *extra: str
    ) -> None:
        """``exec -d`` with ``-t`` when a console socket is given."""
        tty = ["-t", "--console-socket", console_socket] if console_socket else []
        await self.call("exec", "-d", *tty, *extra, cid, *args)

    async def state(self, cid: str) -> dict[str, object]:
        result = await self.call("state", cid)
        state: dict[str, object] = json.loads(result.stdout)
        return state

    async def kill(self, cid: str, signal: str = "KILL") -> None:
        await self.call("kill", cid, signal, check=False)

    async def delete(self, cid: str) -> None:
        await self.call("delete", "-f", cid, check=False)

    async def cleanup(self) -> None:
        """Delete every container this object started, whatever state it is in."""
        with trio.CancelScope(shield=True):
            for cid in reversed(self.started):
                await self.delete(cid)
            self.started.clear()
