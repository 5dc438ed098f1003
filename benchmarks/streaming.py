"""Scenarios 1-3: throughput, fan-out, and a client that never reads.

The container prints a marker, then waits for a line on its terminal before
it writes; the clock starts when that line is sent, once every client has
seen the marker, so container start-up is not part of the figure::

    stty -echo; echo R; read x; exec dd if=/dev/zero bs=64k count=N

Every reader is a process of its own (:mod:`benchmarks.sink`), as real
clients are: eight readers in one interpreter would measure its lock.  The
raw baseline is one reader on the master itself, the physical limit; with a
session log file for consoled (conmon always writes one).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .bench import Bench
from .consoles import ConmonConsole, Console, ConsoledConsole, RawConsole
from .procstat import cpu_seconds
from .stats import Figure, Summary, ratios

MARKER = b"R\r\n"
ROOT = Path(__file__).resolve().parent.parent
BLOCK = 64 * 1024
MB = 1_000_000


def dd_script(nbytes: int) -> str:
    count = nbytes // BLOCK
    return f"stty -echo; echo R; read x; exec dd if=/dev/zero bs={BLOCK} count={count} 2>/dev/null"


@dataclass(slots=True)
class StreamRun:
    seconds: float = math.nan
    broker_cpu: float = math.nan
    client_cpu: float = 0.0
    stalled: bool = False
    lagged_told: bool | None = None
    log_complete: bool | None = None
    errors: list[str] = field(default_factory=list)


class Sink:
    """A reader process (:mod:`benchmarks.sink`) and its line protocol."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    @classmethod
    async def spawn(cls, args: list[str], pass_fds: tuple[int, ...] = ()) -> Sink:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "benchmarks.sink", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            pass_fds=pass_fds,
        )
        return cls(proc)

    async def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some(4096)
            if not chunk:
                raise EOFError(f"reader exited {await self.proc.wait()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    async def expect(self, word: str) -> str:
        """The next line, which must start with ``word``; returns the rest."""
        line = await self.line()
        head, _, rest = line.partition(" ")
        if head != word:
            raise RuntimeError(line)
        return rest

    async def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(text.encode() + b"\n")

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()


def _sink_args(console: Console, nbytes: int) -> tuple[list[str], tuple[int, ...]]:
    if isinstance(console, RawConsole):
        return ["raw", str(console.fd), str(nbytes)], (console.fd,)
    if isinstance(console, ConsoledConsole):
        return ["consoled", f"{console.control_socket}:{console.cid}", str(nbytes)], ()
    if isinstance(console, ConmonConsole):
        return ["conmon", os.fspath(console.bundle / "attach"), str(nbytes)], ()
    raise TypeError(console)


async def stream_once(
    console: Console,
    *,
    nbytes: int,
    readers: int,
    slow: int = 0,
    until_end: bool = False,
    stall_timeout: float = 30.0,
    log_dir: str | None = None,
) -> StreamRun:
    """One run: attach the clients, start the container, time the transfer."""
    result = StreamRun()
    args, fds = _sink_args(console, nbytes)
    extra = ["--stall", str(stall_timeout), *(["--until-end"] if until_end else [])]
    sinks: list[Sink] = []
    slow_sinks: list[Sink] = []
    pid = console.broker_pid
    try:
        with trio.fail_after(60):
            for _ in range(readers):
                sinks.append(await Sink.spawn([*args, *extra], fds))
            for _ in range(slow):
                slow_sinks.append(await Sink.spawn([*args, "--slow"], fds))
            for sink in sinks + slow_sinks:
                await sink.expect("attached")
            await console.start()
            for sink in sinks:
                await sink.expect("ready")
        cpu0 = cpu_seconds(pid) if pid else 0.0
        for index, sink in enumerate(sinks):
            await sink.tell("go" if index == 0 else "wait")
        ends: list[float] = []
        with trio.fail_after(stall_timeout + 120):
            t0 = float(await sinks[0].expect("t0"))
            for sink in sinks:
                line = await sink.line()
                if line.startswith("done "):
                    _, end_s, cpu_s = line.split()
                    ends.append(float(end_s))
                    result.client_cpu += float(cpu_s)
                elif line == "error stalled":
                    result.stalled = True
                else:
                    result.errors.append(line)
        cpu1 = cpu_seconds(pid) if pid else 0.0
        if len(ends) == readers:
            end = max(ends)
            if log_dir is not None:
                log_path = os.path.join(log_dir, f"{console.cid}.log")
                want = len(MARKER) + nbytes
                if _size(log_path) < want:  # not yet: the figure waits for it too
                    with trio.move_on_after(stall_timeout):
                        # Polling on purpose: a file grows without telling anyone.
                        while _size(log_path) < want:  # noqa: ASYNC110
                            await trio.sleep(0.001)
                    end = max(end, time.monotonic())
                result.log_complete = _size(log_path) >= want
            result.seconds = end - t0
            result.broker_cpu = cpu1 - cpu0
        if isinstance(console, ConsoledConsole):
            for sink in slow_sinks:
                await sink.tell("drain")
                with trio.fail_after(30):
                    result.lagged_told = (await sink.expect("ended")).startswith("lagged")
    finally:
        for sink in sinks + slow_sinks:
            await sink.aclose()
    return result


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _failures(runs: dict[str, list[StreamRun]]) -> dict[str, str]:
    """Notes for the table: how many runs of each console failed, and the first reason."""
    notes: dict[str, str] = {}
    for kind, rs in runs.items():
        failed = [r for r in rs if r.errors]
        if failed:
            reason = "lagged" if "LAGGED" in failed[0].errors[0] else failed[0].errors[0][:60]
            notes[kind] = f"({len(failed)}/{len(rs)} failed: {reason})"
    return notes


def _mbps(nbytes: int, runs: list[StreamRun]) -> list[float]:
    return [nbytes / MB / r.seconds if r.seconds > 0 else math.nan for r in runs]


async def _interleaved(
    bench: Bench,
    tag: str,
    *,
    nbytes: int,
    readers: int,
    slow: int = 0,
    until_end: bool = False,
    stall_timeout: float = 30.0,
) -> dict[str, list[StreamRun]]:
    runs: dict[str, list[StreamRun]] = {kind: [] for kind in bench.kinds}
    log_dir = os.fspath(bench.workdir / "logs")
    for _ in range(bench.options.runs):
        for kind in bench.kinds:
            async with bench.console(kind, dd_script(nbytes), tag) as console:
                run = await stream_once(
                    console,
                    nbytes=nbytes,
                    readers=1 if kind == "raw" else readers,
                    slow=0 if kind == "raw" else slow,
                    until_end=until_end,
                    stall_timeout=stall_timeout,
                    log_dir=log_dir if kind == "consoled" else None,
                )
            runs[kind].append(run)  # a failed run counts as missing (NaN), with its reason
    return runs


def _raw_json(runs: dict[str, list[StreamRun]]) -> dict[str, list[dict[str, object]]]:
    return {
        kind: [
            {
                "seconds": r.seconds,
                "broker_cpu_s": r.broker_cpu,
                "clients_cpu_s": r.client_cpu,
                "stalled": r.stalled,
                "lagged_told": r.lagged_told,
                "log_complete": r.log_complete,
                "errors": r.errors,
            }
            for r in rs
        ]
        for kind, rs in runs.items()
    }


def _rate_figures(
    scenario: str,
    rate_label: str,
    ratio_label: str,
    target: float,
    *,
    rates: dict[str, list[float]],
    runs: dict[str, list[StreamRun]],
) -> list[Figure]:
    """The delivered rate beside its baselines, and its ratio to raw against ``target``."""
    notes = _failures(runs)
    return [
        Figure(
            scenario,
            rate_label,
            "MB/s",
            Summary.of(rates["consoled"]),
            None,
            {k: Summary.of(v) for k, v in rates.items() if k != "consoled"},
            notes,
        ),
        Figure(
            scenario,
            ratio_label,
            "ratio",
            Summary.of(ratios(rates["consoled"], rates["raw"])),
            (">=", target),
            {k: Summary.of(ratios(v, rates["raw"])) for k, v in rates.items() if k == "conmon"},
            notes,
        ),
    ]


async def throughput(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    nbytes = bench.options.size(64 << 20, 2 << 20)
    runs = await _interleaved(bench, "tput", nbytes=nbytes, readers=1)
    rates = {kind: _mbps(nbytes, rs) for kind, rs in runs.items()}
    ms_per_mb = {
        kind: [r.broker_cpu * 1000 / (nbytes / MB) for r in rs]
        for kind, rs in runs.items()
        if kind != "raw"
    }
    figures = [
        *_rate_figures(
            "1 throughput", "rate, 1 client", "rate / raw", 0.90, rates=rates, runs=runs
        ),
        Figure(
            "1 throughput",
            "broker CPU per MB",
            "ms/MB",
            Summary.of(ms_per_mb["consoled"]),
            ("<=", 15.0),
            {k: Summary.of(v) for k, v in ms_per_mb.items() if k == "conmon"},
        ),
    ]
    return figures, {"bytes": nbytes, "runs": _raw_json(runs)}


async def fanout(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    nbytes = bench.options.size(64 << 20, 2 << 20)
    clients = 8
    runs = await _interleaved(bench, "fan", nbytes=nbytes, readers=clients)
    rates = {kind: _mbps(nbytes, rs) for kind, rs in runs.items()}
    client_ms = {
        kind: [r.client_cpu * 1000 / (nbytes / MB) if r.errors == [] else math.nan for r in rs]
        for kind, rs in runs.items()
    }
    figures = [
        *_rate_figures(
            "2 fan-out",
            f"rate, {clients} clients",
            "rate / raw (1 reader)",
            0.6,
            rates=rates,
            runs=runs,
        ),
        Figure(
            "2 fan-out",
            "readers' CPU, all together, per MB",
            "ms/MB",
            Summary.of(client_ms["consoled"]),
            None,
            {k: Summary.of(v) for k, v in client_ms.items() if k != "consoled"},
        ),
    ]
    return figures, {"bytes": nbytes, "clients": clients, "runs": _raw_json(runs)}


async def slow_client(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    # The slow client must overflow the default 4 MiB queue even in the quick run.
    nbytes = bench.options.size(16 << 20, 6 << 20)
    stall = 1.0 if bench.options.quick else 5.0
    runs = await _interleaved(
        bench, "slow", nbytes=nbytes, readers=1, slow=1, until_end=True, stall_timeout=stall
    )
    secs = {kind: [r.seconds for r in rs] for kind, rs in runs.items()}
    notes = _failures(runs)
    if "conmon" in runs and any(r.stalled for r in runs["conmon"]):
        stalled = sum(r.stalled for r in runs["conmon"])
        notes["conmon"] = f"stalled {stalled}/{len(runs['conmon'])} (no progress for {stall:g} s)"
    lagged = [r.lagged_told for r in runs["consoled"]]
    logs = [r.log_complete for r in runs["consoled"]]
    complete = all(lagged) and all(logs) and not any(r.stalled for r in runs["consoled"])
    figures = [
        Figure(
            "3 slow client",
            "time to finish (container, reader, log)",
            "s",
            Summary.of(secs["consoled"]),
            None,
            {k: Summary.of(v) for k, v in secs.items() if k != "consoled"},
            notes,
        ),
        Figure(
            "3 slow client",
            "time / raw",
            "ratio",
            Summary.of(ratios(secs["consoled"], secs["raw"])),
            ("<=", 1.5),
            {k: Summary.of(ratios(v, secs["raw"])) for k, v in secs.items() if k == "conmon"},
            notes,
        ),
        Figure(
            "3 slow client",
            "slow client told 'lagged', log complete",
            "runs ok",
            Summary.of([1.0 if complete else 0.0]),
            (">=", 1.0),
            notes={
                "consoled": f"lagged {sum(map(bool, lagged))}/{len(lagged)}, "
                f"log {sum(map(bool, logs))}/{len(logs)}"
            },
        ),
    ]
    return figures, {"bytes": nbytes, "stall_timeout_s": stall, "runs": _raw_json(runs)}
