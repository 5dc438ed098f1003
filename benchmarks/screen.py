"""Scenario 9: what the per-session terminal state costs, and what it buys.

- Throughput with the screen state on (the default) and off
  (``serve --no-terminal-state``), same run, for log lines without queries
  (the state is then never fed: only the inline query scan runs) and for the
  same lines with a cursor position query every 64 KiB (each one makes the
  draining path catch the screen up, within the emulation budget).
- The daemon's CPU per MB with the state on, beside off.
- From spawning ``consoled attach`` to the current screen on its terminal,
  after a session printed 20 MB; beside the raw replay of the ring
  (``--replay 512K``, the old default) and the Python floor.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from tests.support.daemon import DaemonProcess

from .bench import Bench
from .consoles import Console, ConsoledConsole
from .startup import consoled_command
from .stats import Figure, Summary, ratios
from .streaming import MB, StreamRun, stream_once

LINE = b"2026-11-29T12:00:00.000000Z INFO request id=%08d path=/api/v1/items status=200\r\n"
QUERY_EVERY = 64 * 1024


def write_workload(path: Path, nbytes: int, queries: bool) -> None:
    out = bytearray()
    i = 0
    next_query = QUERY_EVERY
    while len(out) < nbytes:
        out += LINE % i
        i += 1
        if queries and len(out) >= next_query:
            out += b"\x1b[6n"
            next_query += QUERY_EVERY
    path.write_bytes(bytes(out[:nbytes]))


def cat_script(name: str) -> str:
    # -opost: the bytes arrive as written (no CR added), so the readers count them exactly.
    return f"stty -echo; echo R; stty -opost; read x; exec cat /out/{name}"


async def _stream(
    bench: Bench, kind: str, script: str, nbytes: int, daemon: DaemonProcess | None
) -> StreamRun:
    async with bench.console(kind, script, "scr", daemon) as console:
        return await stream_once(console, nbytes=nbytes, readers=1)


async def throughput(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    nbytes = bench.options.size(64 << 20, 2 << 20)
    out = bench.workdir / "out"
    out.mkdir(exist_ok=True)
    on = await bench.daemon()
    off = await bench.start_daemon(
        "nostate", ["--no-terminal-state", "--log-dir", str(bench.workdir / "logs-off")]
    )
    figures: list[Figure] = []
    data: dict[str, object] = {"bytes": nbytes}
    for workload, queries in (("log lines", False), ("log lines + a query per 64 KiB", True)):
        name = "q.txt" if queries else "plain.txt"
        await trio.to_thread.run_sync(write_workload, out / name, nbytes, queries)
        script = cat_script(name)
        runs: dict[str, list[StreamRun]] = {"raw": [], "on": [], "off": []}
        for _ in range(bench.options.runs):
            runs["raw"].append(await _stream(bench, "raw", script, nbytes, None))
            runs["on"].append(await _stream(bench, "consoled", script, nbytes, on))
            runs["off"].append(await _stream(bench, "consoled", script, nbytes, off))
        rates = {k: [nbytes / MB / r.seconds if r.seconds > 0 else float("nan") for r in rs]
                 for k, rs in runs.items()}  # fmt: skip
        cpu = {k: [r.broker_cpu * 1000 / (nbytes / MB) for r in rs] for k, rs in runs.items()
               if k != "raw"}  # fmt: skip
        figures += [
            Figure(
                "9 screen state",
                f"rate on / off, {workload}",
                "ratio",
                Summary.of(ratios(rates["on"], rates["off"])),
                (">=", 0.9),
                {"raw": Summary.of(rates["raw"]), "conmon": None},
                {"raw": "(MB/s, bare pty)"},
            ),
            Figure(
                "9 screen state",
                f"daemon CPU per MB, state on, {workload}",
                "ms/MB",
                Summary.of(cpu["on"]),
                None,
                {"raw": Summary.of(cpu["off"])},
                {"raw": "(state off)"},
            ),
        ]
        data[workload] = {k: [[r.seconds, r.broker_cpu] for r in rs] for k, rs in runs.items()}
    await bench.stop_daemon(off)
    return figures, data


def time_to_text(argv: Sequence[str], env: Mapping[str, str], text: bytes) -> tuple[float, int]:
    """Seconds from spawning ``argv`` on a fresh 24x80 pty to ``text`` on it, and bytes read."""
    master, slave = os.openpty()
    t = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    got = bytearray()
    try:
        deadline = t + 30
        while text not in got:
            if not select.select([master], [], [], max(0.0, deadline - time.perf_counter()))[0]:
                raise RuntimeError(f"{argv} never showed {text!r}: {bytes(got[-200:])!r}")
            got += os.read(master, 65536)
        return time.perf_counter() - t, len(got)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)


async def _wait_written(console: Console, daemon: DaemonProcess, nbytes: int) -> None:
    """Until the session has written ``nbytes`` (a reader would lag behind the flood)."""
    argv = [*consoled_command(), "ls", "--json"]
    with trio.fail_after(120):
        while True:
            result = await trio.run_process(argv, capture_stdout=True, env=daemon.env())
            sessions = json.loads(result.stdout)
            if any(s["session"] == console.cid and s["bytes_out"] >= nbytes for s in sessions):
                return
            await trio.sleep(0.2)


async def attach_after_flood(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    runs = bench.options.size(15, 3)
    nbytes = bench.options.size(20_000_000, 2_000_000)
    daemon = await bench.daemon()
    env = bench.command_env(daemon.env())
    script = f"yes 'output of a busy program' | head -c {nbytes}; echo D-$((6*7)); exec sleep 1000"
    samples: dict[str, list[float]] = {"screen": [], "replay": [], "floor": []}
    sizes: dict[str, int] = {}
    floor = [
        sys.executable,
        "-c",
        "import sys; sys.stdout.buffer.write(b'D-42'); sys.stdout.flush()",
    ]
    console: Console
    async with bench.console("consoled", script, "flood") as console:
        assert isinstance(console, ConsoledConsole)
        await console.start()
        await _wait_written(console, daemon, nbytes + len(b"D-42\r\n"))
        base = [*consoled_command(), "attach"]
        variants = {
            "screen": [*base, console.cid],
            "replay": [*base, "--replay", "512K", console.cid],
            "floor": floor,
        }
        for argv in variants.values():  # untimed: fills the bytecode cache
            await trio.to_thread.run_sync(time_to_text, argv, env, b"D-42")
        for _ in range(runs):
            for name, argv in variants.items():
                seconds, size = await trio.to_thread.run_sync(time_to_text, argv, env, b"D-42")
                samples[name].append(seconds * 1000)
                sizes[name] = size
    figures = [
        Figure(
            "9 screen state",
            f"attach to the current screen after {nbytes / MB:g} MB",
            "ms",
            Summary.of(samples["screen"]),
            ("<=", 100.0),
            {"raw": Summary.of(samples["floor"]), "conmon": Summary.of(samples["replay"])},
            {"raw": "(python floor)", "conmon": "(consoled --replay 512K, not conmon)"},
        )
    ]
    return figures, {"runs": runs, "bytes": nbytes, "ms": samples, "written": sizes}


async def screen(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    figs, data = await throughput(bench)
    figs2, data2 = await attach_after_flood(bench)
    return figs + figs2, {"throughput": data, "attach": data2}
