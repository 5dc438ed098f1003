"""Scenario 6: from starting ``consoled attach`` to its first replayed byte on stdout.

The baseline is the floor of any Python command: the same interpreter
starting and writing one byte.  conmon has no attach command of its own (its
clients are podman and CRI-O), so it has no figure here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from .bench import Bench
from .stats import Figure, Summary


def consoled_command() -> list[str]:
    """The installed ``consoled`` script beside our interpreter, else ``python -m consoled``."""
    script = Path(sys.executable).parent / "consoled"
    return [str(script)] if script.exists() else [sys.executable, "-m", "consoled"]


def time_first_byte(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Seconds from spawning ``argv`` to the first byte on its stdout."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        first = os.read(proc.stdout.fileno(), 1)
        elapsed = time.perf_counter() - t
        if not first:
            raise RuntimeError(f"{argv} wrote nothing (exit {proc.wait()})")
        return elapsed
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def attach_start(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    runs = bench.options.size(20, 3)
    daemon = await bench.daemon()
    env = bench.command_env(daemon.env())
    floor = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x'); sys.stdout.flush()"]
    samples: dict[str, list[float]] = {"raw": [], "consoled": []}
    async with bench.console("consoled", "echo hello; exec sleep 1000", "att") as console:
        await console.start()
        tap = await trio.to_thread.run_sync(console.open_tap)
        await trio.to_thread.run_sync(tap.read_until, b"hello")  # in the scrollback now
        attach = [*consoled_command(), "attach", console.cid]
        for argv in (floor, attach):  # untimed: fills the bytecode cache
            await trio.to_thread.run_sync(time_first_byte, argv, env)
        for _ in range(runs):
            samples["raw"].append(await trio.to_thread.run_sync(time_first_byte, floor, env) * 1000)
            samples["consoled"].append(
                await trio.to_thread.run_sync(time_first_byte, attach, env) * 1000
            )
    figures = [
        Figure(
            "6 attach start",
            "spawn to first replayed byte, p50",
            "ms",
            Summary.of(samples["consoled"]),
            ("<=", 45.0),  # issue 14
            {"raw": Summary.of(samples["raw"]), "conmon": None},
            {"raw": "(python floor)", "conmon": "n/a"},
        )
    ]
    return figures, {"runs": runs, "ms": samples}
