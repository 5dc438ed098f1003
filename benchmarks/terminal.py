"""``python -m benchmarks.terminal``: what the per-session terminal state costs.

Pure CPU, no containers: feeding throughput of :class:`~consoled.terminal.Screen`
(and of pyavt alone, for the wrapper's overhead) for log lines and for
``top``-like escape-heavy output, the same through a
:class:`~consoled.terminal.Responder` (query scanning and answers, what the
daemon would run), :class:`~consoled.terminal.ModeTracker` and
:class:`~consoled.terminal.OutputFilter` throughput (what the attach client
would run), the time to render a 120x40 screen, to catch up on 512 KiB (the
default ring) and the memory a screen with a full history takes.

Not part of ``python -m benchmarks`` yet. Each figure is the best of a few
runs (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator

import avt

from consoled.terminal import ModeTracker, OutputFilter, QueryScanner, Responder, Screen

MB = 1_000_000
ROWS, COLS = 40, 120
RING = 512 * 1024


def log_stream(size: int) -> bytes:
    """Log lines, as a busy service prints them."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += b"2026-11-29T12:00:00.%06dZ INFO request id=%d path=/api/v1/items status=200\r\n" % (
            i % 1_000_000,
            i,
        )
        i += 1
    return bytes(out[:size])


def top_stream(size: int) -> bytes:
    """Screens of ``top``: cursor-addressed rows, reverse video, colours, clears."""
    out = bytearray()
    frame = 0
    while len(out) < size:
        out += b"\x1b[H\x1b[1mtop - 12:00:%02d up 1 day, load average: 0.%02d\x1b[m\x1b[K" % (
            frame % 60,
            frame % 100,
        )
        out += b"\x1b[2;1H\x1b[7m  PID USER      PR  NI    VIRT    RES  %CPU COMMAND\x1b[m\x1b[K"
        for row in range(3, ROWS + 1):
            pid = row * 37 + frame
            out += b"\x1b[%d;1H%5d root      20   0 " % (row, pid)
            out += b"\x1b[32m%7d\x1b[m %6d  \x1b[1;31m%4.1f\x1b[m proc%d\x1b[K" % (
                pid * 13,
                pid * 7,
                (pid % 100) / 10,
                pid,
            )
        out += b"\x1b[J"
        frame += 1
    return bytes(out[:size])


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def best(runs: int, fn: Callable[[], object]) -> float:
    """The shortest of ``runs`` timings of ``fn``, in seconds."""
    times = []
    for _ in range(runs):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput(data: bytes, chunk: int, make: Callable[[], Callable[[bytes], object]]) -> float:
    """MB/s of feeding ``data`` in ``chunk``-byte pieces to a fresh ``make()``."""
    pieces = list(chunks(data, chunk))

    def run() -> None:
        feed = make()
        for piece in pieces:
            feed(piece)

    return len(data) / best(3, run) / MB


def raw_vt() -> Callable[[bytes], object]:
    vt = avt.Vt(COLS, ROWS, 0)
    return lambda b: vt.feed_str(b.decode("utf-8", "replace"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(size: int) -> dict[str, float]:
    results: dict[str, float] = {}
    streams = {"log": log_stream(size), "top": top_stream(size)}
    for name, data in streams.items():
        for chunk in (4096, 65536):
            tag = f"{name}, {chunk // 1024} KiB chunks"
            results[f"avt Vt alone ({tag}), MB/s"] = throughput(data, chunk, raw_vt)
            results[f"Screen.feed ({tag}), MB/s"] = throughput(
                data, chunk, lambda: Screen(ROWS, COLS).feed
            )
            results[f"Responder.feed ({tag}), MB/s"] = throughput(
                data, chunk, lambda: Responder(Screen(ROWS, COLS)).feed
            )
        results[f"QueryScanner.feed ({name}, 64 KiB chunks), MB/s"] = throughput(
            data, 65536, lambda: QueryScanner().feed
        )
        results[f"ModeTracker.feed ({name}, 64 KiB chunks), MB/s"] = throughput(
            data, 65536, lambda: ModeTracker().feed
        )
        results[f"OutputFilter.feed ({name}, 64 KiB chunks), MB/s"] = throughput(
            data, 65536, lambda: OutputFilter().feed
        )

    for name, data in streams.items():
        screen = Screen(ROWS, COLS)
        screen.feed(data[-RING:])
        render = screen.render()
        results[f"render {COLS}x{ROWS} ({name}), ms"] = best(20, screen.render) * 1000
        results[f"render {COLS}x{ROWS} ({name}), bytes"] = len(render)

        def catch_up(data: bytes = data) -> None:
            screen = Screen(ROWS, COLS)
            for piece in chunks(data[-RING:], 65536):
                screen.feed(piece)
            screen.render()

        results[f"catch up 512 KiB and render ({name}), ms"] = best(5, catch_up) * 1000

    log = streams["log"]
    screen = Screen(ROWS, COLS, history=1000)
    screen.feed(log[-RING:])
    results["render with 1000 history lines (log), ms"] = (
        best(5, lambda: screen.render(history=1000)) * 1000
    )

    gc.collect()
    before = rss()
    screens = []
    for _ in range(100):
        s = Screen(ROWS, COLS, history=1000)
        s.feed(log[:200_000])  # well over 1000 lines scrolled off
        screens.append(s)
    results["memory per screen, 1000 history lines full, KiB"] = (rss() - before) / 100 / 1024
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.terminal", description=__doc__)
    parser.add_argument("--size", type=float, default=4.0, help="MB of each stream (default 4)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = measure(int(args.size * MB))
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        width = max(map(len, results))
        for key, value in results.items():
            print(f"{key:<{width}}  {value:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
