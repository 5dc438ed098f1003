"""Scenario 7: thousands of sessions in one daemon.

A helper process (:mod:`tests.support.ptyholder`) opens the ptys, hands each
master to a session's console socket exactly as a runtime does, and keeps
the slaves open; each terminal then prints 1 KiB.  Measured on a daemon of
its own: intake rate, memory per additional session (PSS, after a warm-up
batch), idle CPU, and ``consoled ls --json``.  conmon's memory for one
container is measured beside it (one conmon process per container).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import trio

from consoled.client.conn import Client
from consoled.protocol import events as ev
from tests.support.daemon import DaemonProcess
from tests.support.holder import pty_headroom

from .bench import Bench
from .consoles import ConmonConsole
from .procstat import cpu_seconds, pss_kib, rss_kib
from .startup import consoled_command
from .stats import Figure, Summary

PRINTED = 1024


class Holder:
    """The pty-holding helper process (blocking pipes; used from threads)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ptyholder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.command(line)
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def create_and_hand(control: str, holder: Holder, names: list[str]) -> None:
    """Create a session per name and have the helper hand it a master."""
    with Client(control) as client:
        for i, name in enumerate(names):
            path = client.call(ev.CreateSocket(name), ev.SocketCreated).path
            holder.command(f"hand {path}")
            if i % 32 == 31:
                assert holder.proc.stdin is not None
                holder.proc.stdin.flush()
    assert holder.ask("sync").startswith("ok")


def bytes_out(control: str) -> int:
    with Client(control) as client:
        return sum(s.bytes_out for s in client.list_sessions())


async def wait_events(daemon: DaemonProcess, event: str, count: int, within: float) -> None:
    """Wait until ``count`` events named ``event`` were logged (scanning only new lines)."""
    seen = 0
    index = 0
    with trio.fail_after(within):
        while True:
            events = daemon.events
            while index < len(events):
                if events[index].get("event") == event:
                    seen += 1
                index += 1
            if seen >= count:
                return
            await trio.sleep(0.002)


async def wait_bytes(control: str, total: int, within: float) -> None:
    """Wait until the daemon has read ``total`` bytes from all masters together."""
    with trio.fail_after(within):
        # Polling on purpose: the daemon has nothing to notify us with.
        while await trio.to_thread.run_sync(bytes_out, control) < total:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def notifications_quiet(daemon: DaemonProcess, quiet: float, within: float) -> None:
    """Wait until the daemon has sent its service manager nothing for ``quiet`` seconds."""
    with trio.fail_after(within):
        while True:
            seen = len(daemon.notifications)
            await trio.sleep(quiet)
            if len(daemon.notifications) == seen:
                return


async def settle_pss(pid: int) -> int:
    await trio.sleep(1.0)
    return pss_kib(pid)


async def scale(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    quick = bench.options.quick
    total = bench.options.size(4000, 60)
    warm = bench.options.size(200, 10)
    idle_window = 1.0 if quick else 10.0
    data: dict[str, object] = {"sessions": total, "warm_up": warm}
    timeout = 120.0
    with pty_headroom(total):
        daemon = await bench.start_daemon(
            "scale", ["--log-dir", str(bench.workdir / "scale-logs"), "--log-level", "info"]
        )
        holder = Holder()
        try:
            control = daemon.control_socket
            names = [f"s{i:05d}" for i in range(total)]
            # Warm-up: the first sessions pay for code paths and allocator arenas.
            await trio.to_thread.run_sync(create_and_hand, control, holder, names[:warm])
            await wait_events(daemon, "session.running", warm, timeout)
            await trio.to_thread.run_sync(holder.ask, f"write {PRINTED}")
            await wait_bytes(control, warm * PRINTED, timeout)
            pss0 = await settle_pss(daemon.pid)
            # Intake: from the first create_socket to the last session running.
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    trio.to_thread.run_sync, create_and_hand, control, holder, names[warm:]
                )
                await wait_events(daemon, "session.running", total, timeout)
                intake_s = time.perf_counter() - t0
            await trio.to_thread.run_sync(holder.ask, f"write {PRINTED}")
            await wait_bytes(control, total * PRINTED, timeout)
            pss1 = await settle_pss(daemon.pid)
            per_session = (pss1 - pss0) / (total - warm)
            # The daemon keeps each session's fds in the fd store (the harness
            # plays systemd here, and reads more slowly): let it finish that, so
            # that the idle window is idle.
            await notifications_quiet(daemon, 0.5, timeout)
            # Idle: nothing happens; the daemon should sleep.
            cpu0 = cpu_seconds(daemon.pid)
            await trio.sleep(idle_window)
            idle_pct = (cpu_seconds(daemon.pid) - cpu0) / idle_window * 100
            ls_ms = []
            env = bench.command_env(daemon.env())
            for i in range(bench.options.size(5, 1) + 1):  # the first fills the bytecode cache
                t = time.perf_counter()
                result = await trio.run_process(
                    [*consoled_command(), "ls", "--json"],
                    env=env,
                    capture_stdout=True,
                    capture_stderr=True,
                )
                if i:
                    ls_ms.append((time.perf_counter() - t) * 1000)
                assert len(json.loads(result.stdout)) == total
            data.update(
                pss_kib_warm=pss0,
                pss_kib_full=pss1,
                rss_kib_full=rss_kib(daemon.pid),
                intake_s=intake_s,
                idle_cpu_pct=idle_pct,
                ls_ms=ls_ms,
            )
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(holder.close)
                await bench.stop_daemon(daemon)
    conmon_pss: list[float] = []
    conmon_rss: list[float] = []
    if bench.conmon:
        async with contextlib.AsyncExitStack() as stack:
            consoles = []
            # PSS splits shared pages among the conmons running: run several,
            # as a host with containers does.
            for _ in range(bench.options.size(8, 1)):
                console = await stack.enter_async_context(
                    bench.console("conmon", "exec sleep 1000", "pss")
                )
                await console.start()
                assert isinstance(console, ConmonConsole)
                consoles.append(console)
            await trio.sleep(1.0)
            for console in consoles:
                conmon_pss.append(float(pss_kib(console.broker_pid)))
                conmon_rss.append(float(rss_kib(console.broker_pid)))
    data.update(conmon_pss_kib=conmon_pss, conmon_rss_kib=conmon_rss)
    rate = (total - warm) / intake_s
    figures = [
        Figure(
            "7 scale",
            f"PSS per additional session ({total} sessions)",
            "KiB",
            Summary.of([per_session]),
            ("<=", 40.0),
            {"raw": None, "conmon": Summary.of(conmon_pss)},
            {"raw": "n/a", "conmon": "(PSS of one conmon per container)"},
        ),
        Figure("7 scale", "idle CPU", "% of a core", Summary.of([idle_pct]), ("<=", 1.0)),
        Figure("7 scale", "`consoled ls --json`", "ms", Summary.of(ls_ms), ("<=", 300.0)),
        Figure("7 scale", "intake", "sessions/s", Summary.of([rate]), (">=", 300.0)),
    ]
    return figures, data
