"""``python -m benchmarks [--quick] [--runs N] [--only SCENARIO] [--json PATH]``.

Runs the scenarios in order, prints one table (targets beside the figures,
``met`` or ``MISSED``), and writes every raw sample as JSON if asked.  Needs
root, runc and the busybox rootfs (built on first use); conmon is measured
when it is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import interactive, reexec, scale, screen, startup, streaming
from .bench import Bench, Options, open_bench
from .procstat import loadavg
from .stats import Figure, table

Scenario = Callable[[Bench], Awaitable[tuple[list[Figure], dict[str, object]]]]

SCENARIOS: dict[str, Scenario] = {
    "throughput": streaming.throughput,
    "fanout": streaming.fanout,
    "slow": streaming.slow_client,
    "echo": interactive.echo,
    "resize": interactive.resize,
    "attach": startup.attach_start,
    "scale": scale.scale,
    "reexec": reexec.reexec,
    "screen": screen.screen,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="consoled beside a bare pty and conmon, on real runc containers",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (smoke test)")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs (default: 5)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", metavar="PATH", help="write figures and raw samples here")
    parser.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `consoled serve` option for the daemon under test (repeatable; "
        "e.g. --daemon-arg=--client-queue=64M)",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = args.runs if args.runs is not None else (1 if args.quick else 5)
    options = Options(quick=args.quick, runs=max(1, runs), daemon_args=tuple(args.daemon_arg))
    chosen = args.only or list(SCENARIOS)
    report: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "quick": options.quick,
            "runs": options.runs,
            "daemon_args": list(options.daemon_args),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "conmon": shutil.which("conmon"),
            "load_before": loadavg(),
        },
        "scenarios": {},
        "figures": [],
    }
    figures: list[Figure] = []
    async with open_bench(options) as bench:
        for name in chosen:
            t = time.perf_counter()
            print(f"-- {name} ...", file=sys.stderr, flush=True)
            figs, data = await SCENARIOS[name](bench)
            elapsed = time.perf_counter() - t
            print(f"-- {name}: {elapsed:.1f} s", file=sys.stderr, flush=True)
            figures.extend(figs)
            report["scenarios"][name] = {
                "seconds": elapsed,
                "figures": [f.to_json() for f in figs],
                "data": data,
            }
    report["meta"]["load_after"] = loadavg()
    report["figures"] = [f.to_json() for f in figures]
    report["table"] = table(figures)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: runc containers need root", file=sys.stderr)
        return 2
    t = time.perf_counter()
    report = trio.run(run, args)
    report["meta"]["seconds"] = time.perf_counter() - t
    meta = report["meta"]
    print(
        f"consoled benchmarks: {meta['runs']} run(s){' (quick)' if meta['quick'] else ''}, "
        f"{meta['cpus']} CPUs, load {meta['load_before'][0]:.2f} -> {meta['load_after'][0]:.2f}, "
        f"{meta['seconds']:.0f} s"
    )
    print(report["table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    missed = [f for f in report["figures"] if f["met"] is False]
    return 1 if missed else 0
