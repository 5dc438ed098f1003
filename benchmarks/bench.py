"""The benchmark's environment: work directory, runc, the daemon under test, containers.

One :class:`Bench` per invocation.  It owns everything it starts (daemons,
containers, conmon processes, helpers) and cleans it all up on the way out,
failure or not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.support.bundle import build_rootfs, make_bundle
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime

from .consoles import ConmonConsole, Console, ConsoledConsole, RawConsole

DEFAULT_ROOTFS = Path("/var/tmp/consoled-test-rootfs")


@dataclass(frozen=True, slots=True)
class Options:
    """How much to measure.

    Attributes:
        quick: tiny sizes and one run, for the smoke test.
        runs: interleaved runs per scenario (each: baseline, consoled, baseline...).
        daemon_args: extra ``consoled serve`` options for the daemon under test.
    """

    quick: bool = False
    runs: int = 5
    daemon_args: tuple[str, ...] = ()

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


class Bench:
    """Everything one benchmark invocation uses.

    Args:
        options: sizes and run counts.
        nursery: where daemons' log readers run.
        workdir: a short directory (socket paths must fit in 108 bytes).
    """

    def __init__(self, options: Options, nursery: trio.Nursery, workdir: Path) -> None:
        self.options = options
        self.nursery = nursery
        self.workdir = workdir
        preset = os.environ.get("CONSOLED_TEST_ROOTFS")
        self.rootfs = Path(preset) if preset else DEFAULT_ROOTFS
        self.runtime = Runtime("runc", workdir / "runc")
        self.runtime.root.mkdir()
        self.conmon = shutil.which("conmon")
        self.daemons: list[DaemonProcess] = []
        self._ids = itertools.count(1)
        self._daemon: DaemonProcess | None = None

    @property
    def kinds(self) -> list[str]:
        """The consoles measured, baseline first (the interleaving order of a run)."""
        return ["raw", "consoled", *(["conmon"] if self.conmon else [])]

    def prepare(self) -> None:
        self.rootfs.mkdir(parents=True, exist_ok=True)
        build_rootfs(self.rootfs)

    def command_env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` for timing a command as installed: with its bytecode cached.

        pip compiles what it installs; an environment with
        $PYTHONDONTWRITEBYTECODE would make every run compile consoled's
        sources again.  The cache goes to our work directory, not the tree.
        """
        env = dict(env)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.fspath(self.workdir / "pycache")
        return env

    def new_id(self, tag: str) -> str:
        return f"b{os.getpid()}-{next(self._ids)}-{tag}"

    def bundle(self, script: str) -> Path:
        """A fresh bundle (conmon puts its sockets and FIFOs in it) running ``sh -c SCRIPT``."""
        n = next(self._ids)
        out = self.workdir / "out"
        out.mkdir(exist_ok=True)
        return make_bundle(
            self.rootfs, self.workdir / f"bundle{n}", ["sh", "-c", script], out_dir=out
        )

    async def start_daemon(self, name: str, args: Sequence[str] = ()) -> DaemonProcess:
        daemon = DaemonProcess(self.workdir / name, list(args))
        self.daemons.append(daemon)
        await daemon.start(self.nursery)
        return daemon

    async def daemon(self) -> DaemonProcess:
        """The shared daemon under test for scenarios 1-6 (with session log files)."""
        if self._daemon is None:
            self._daemon = await self.start_daemon(
                "d",
                [
                    "--log-dir",
                    str(self.workdir / "logs"),
                    # One whole file, as conmon writes: the streaming scenarios wait
                    # until it holds every byte, which a file rotated at the default
                    # 10 MiB never does (every 64 MiB run then took 30 s).
                    "--log-max-size",
                    "0",
                    "--log-level",
                    "info",
                    *self.options.daemon_args,
                ],
            )
        return self._daemon

    async def stop_daemon(self, daemon: DaemonProcess) -> None:
        with trio.CancelScope(shield=True):
            if daemon.returncode is None:
                await daemon.stop()
            if daemon is self._daemon:
                self._daemon = None

    @asynccontextmanager
    async def console(
        self, kind: str, script: str, tag: str, daemon: DaemonProcess | None = None
    ) -> AsyncIterator[Console]:
        """A created container running ``script`` under console ``kind``; removed on exit.

        ``daemon``: for ``consoled``, another daemon than the shared one.
        """
        cid = self.new_id(tag)
        bundle = self.bundle(script)
        console: Console
        if kind == "raw":
            console = await RawConsole.create(
                self.runtime, cid, bundle, self.workdir / f"{cid}.sock"
            )
        elif kind == "consoled":
            daemon = daemon or await self.daemon()
            console = await ConsoledConsole.create(
                self.runtime, cid, bundle, daemon.control_socket, daemon.pid
            )
        elif kind == "conmon":
            assert self.conmon is not None
            console = await ConmonConsole.create(
                self.runtime, cid, bundle, self.workdir / f"cm-{cid}", self.conmon
            )
        else:
            raise ValueError(kind)
        try:
            yield console
        finally:
            await console.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.runtime.cleanup()
            for daemon in self.daemons:
                if daemon.returncode is None:
                    with contextlib.suppress(AssertionError):  # it hung and was killed
                        await daemon.stop()


@asynccontextmanager
async def open_bench(options: Options) -> AsyncIterator[Bench]:
    workdir = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    try:
        async with trio.open_nursery() as nursery:
            bench = Bench(options, nursery, workdir)
            try:
                bench.prepare()
                yield bench
            finally:
                await bench.aclose()
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
