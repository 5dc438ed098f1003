"""Scenario 8: ``consoled reexec`` with a thousand sessions.

A daemon of its own holds 1,000 sessions whose slaves a helper holds
(:mod:`tests.support.ptyholder`), each with some output in its ring, plus one
real runc container that prints a line every couple of milliseconds, with
``consoled attach --no-tty`` attached to it.  Each run replaces the daemon's
program with ``consoled reexec``.  Measured:

- from starting ``consoled reexec`` to the successor's ``READY=1`` (target:
  under 1 s);
- the pause the attached client sees: the longest gap between two pieces of
  output reaching it, from just before the reexec to just after (target:
  under 100 ms), beside the longest gap in a quiet stretch of the same run
  (what the machine's noise alone gives);
- that the client's output holds every line exactly once.

There is no baseline: no other console holder survives its own restart.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import time

import trio

from tests.support.holder import pty_headroom

from .bench import Bench
from .scale import Holder, create_and_hand, wait_events
from .startup import consoled_command
from .stats import Figure, Summary

LINE = re.compile(rb"L(\d+)\r\n")
PRINTED = 512


class Arrivals:
    """The attached client's output, with the time each read arrived."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.times: list[float] = []
        self.changed = trio.Event()

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        async for chunk in stream:
            self.times.append(time.monotonic())
            self.data += chunk
            self.changed.set()
            self.changed = trio.Event()

    def longest_gap(self, start: float, end: float) -> float:
        times = [t for t in self.times if start <= t <= end]
        return max((b - a for a, b in itertools.pairwise(times)), default=float("nan"))

    async def wait_more(self, count: int) -> None:
        """Wait until ``count`` more reads have arrived."""
        target = len(self.times) + count
        while len(self.times) < target:
            await self.changed.wait()


async def reexec(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    sessions = bench.options.size(1000, 20)
    runs = bench.options.runs
    data: dict[str, object] = {"sessions": sessions}
    ready_ms: list[float] = []
    command_ms: list[float] = []
    pause_ms: list[float] = []
    quiet_ms: list[float] = []
    with pty_headroom(sessions):
        daemon = await bench.start_daemon(
            "reexec", ["--log-dir", str(bench.workdir / "reexec-logs"), "--log-level", "info"]
        )
        holder = Holder()
        client: trio.Process | None = None
        try:
            names = [f"r{i:05d}" for i in range(sessions)]
            await trio.to_thread.run_sync(create_and_hand, daemon.control_socket, holder, names)
            await wait_events(daemon, "session.running", sessions, 120)
            await trio.to_thread.run_sync(holder.ask, f"write {PRINTED}")
            # The ticking container, and a client attached to it.
            cid = bench.new_id("tick")
            script = "i=0; while :; do i=$((i+1)); echo L$i; usleep 2000; done"
            path = await trio.to_thread.run_sync(_socket, daemon.control_socket, cid)
            await bench.runtime.run(cid, bench.bundle(script), path)
            client = await trio.lowlevel.open_process(
                [*consoled_command(), "attach", "--no-tty", "--no-replay", cid],
                env=daemon.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            arrivals = Arrivals()
            async with trio.open_nursery() as nursery:
                assert client.stdout is not None
                nursery.start_soon(arrivals.read, client.stdout)
                with trio.fail_after(60):
                    await arrivals.wait_more(50)
                for _ in range(runs):
                    quiet0 = time.monotonic()
                    with trio.fail_after(60):
                        await arrivals.wait_more(100)
                    quiet_ms.append(arrivals.longest_gap(quiet0, time.monotonic()) * 1000)
                    readies = daemon.readies
                    t0 = time.monotonic()
                    result = await trio.run_process(
                        [*consoled_command(), "reexec"],
                        env=bench.command_env(daemon.env()),
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                    t_cmd = time.monotonic()
                    if result.returncode != 0:
                        raise RuntimeError(f"consoled reexec failed: {result.stderr!r}")
                    with trio.fail_after(60):
                        await daemon.wait_ready(readies + 1)
                    t_ready = time.monotonic()
                    with trio.fail_after(60):
                        await arrivals.wait_more(100)
                    command_ms.append((t_cmd - t0) * 1000)
                    ready_ms.append((t_ready - t0) * 1000)
                    pause_ms.append(arrivals.longest_gap(t0, time.monotonic()) * 1000)
                nursery.cancel_scope.cancel()
            numbers = [int(m.group(1)) for m in LINE.finditer(arrivals.data)]
            exact = all(b == a + 1 for a, b in itertools.pairwise(numbers))
            data.update(lines=len(numbers), exactly_once=exact)
            if not exact:
                raise RuntimeError("the attached client's lines were not each seen once, in order")
        finally:
            with trio.CancelScope(shield=True):
                if client is not None:
                    client.kill()
                    await client.wait()
                await trio.to_thread.run_sync(holder.close)
                await bench.stop_daemon(daemon)
    data.update(ready_ms=ready_ms, command_ms=command_ms, pause_ms=pause_ms, quiet_ms=quiet_ms)
    figures = [
        Figure(
            "8 reexec",
            f"`consoled reexec` to READY=1 ({sessions} sessions)",
            "ms",
            Summary.of(ready_ms),
            ("<=", 1000.0),
        ),
        Figure(
            "8 reexec",
            "longest gap an attached client sees",
            "ms",
            Summary.of(pause_ms),
            ("<=", 100.0),
        ),
        Figure(
            "8 reexec",
            "longest gap in a quiet stretch (the machine's noise)",
            "ms",
            Summary.of(quiet_ms),
        ),
    ]
    return figures, data


def _socket(control: str, name: str) -> str:
    from consoled.client.conn import Client
    from consoled.protocol import events as ev

    with Client(control) as client:
        return client.call(ev.CreateSocket(name), ev.SocketCreated).path
