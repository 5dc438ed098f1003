"""Scenarios 4 and 5: keystroke echo latency and resize latency.

Echo: ``cat`` on a cooked terminal; each round trip sends one byte and waits
for the line discipline's echo of it (the kernel echoes; ``cat`` only keeps
the terminal open and cooked).  Fewer than 4,095 bytes go into one line, so
the line buffer never fills.  consoled's client handles stream data as a
lean client in any language would (``taps.FramedTap``: a frame made by
concatenation, an ``output`` frame recognised by its header), as conmon's
reads raw packets; beside it, the same trips by a client speaking through
the project's protocol library (``consoled.client``, what ``consoled
attach`` pays).

Attach, connect to first echo (consoled and conmon): a new client connects,
attaches without replay, sends one byte and waits for its echo; then it
closes.  consoled's client is the project's own (``consoled.client.conn``:
``hello`` and ``attach``, each waiting for its answer, then the input);
conmon's takes its attach socket, where connecting is attaching.

Resize: a new size is asked for, then ``stty size`` in the container must
show it.  The figure is the time until the size is in force, measured the
same way for consoled and conmon: from the attached client sending its new
window size (``window_size``, as ``consoled attach`` does on SIGWINCH; for
conmon, writing to its ``ctl`` FIFO, as podman does for its attach) until
TIOCGWINSZ on the container's terminal (its init's fd 0) shows the size;
for raw, the ioctl on the master.  Beside it, consoled's other way, the
``resize`` request on a control connection: until the size is in force,
and until its ``resized`` reply (what a client waits for; conmon does not
answer).
"""

from __future__ import annotations

import math
import os
import re
import time
from functools import partial

import trio

from .bench import Bench
from .consoles import ConmonConsole, Console, ConsoledConsole
from .stats import Figure, Summary, percentile
from .taps import ConsoledTap, Tap, get_winsize

READY = b"R\r\n"
SIZE_LINE = re.compile(rb"(\d+) (\d+)\r\n")


def _echo(tap: Tap, key: bytes) -> None:
    """Type ``key`` and wait for the terminal to echo it."""
    tap.send(key)
    got = b""
    while key not in got:
        data = tap.recv()
        if not data:
            raise EOFError("terminal closed while waiting for an echo")
        got += data


def _echo_trips(tap: Tap, trips: int) -> list[float]:
    """Round-trip times in microseconds."""
    out: list[float] = []
    perf = time.perf_counter_ns
    for _ in range(trips):
        t = perf()
        _echo(tap, b"a")
        out.append((perf() - t) / 1000)
    return out


def _attach_trips(console: Console, count: int) -> list[float]:
    """Connect-to-first-echo times in microseconds, a new client each time."""
    out: list[float] = []
    perf = time.perf_counter_ns
    for _ in range(count):
        t = perf()
        if isinstance(console, ConsoledConsole):
            tap: Tap = console.open_tap(replay=0)
        else:
            tap = console.open_tap()
        try:
            _echo(tap, b"b")
            out.append((perf() - t) / 1000)
        finally:
            tap.close()
            console.taps.remove(tap)
    return out


async def echo(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    trips = bench.options.size(1000, 100)
    attaches = bench.options.size(100, 10)
    p50: dict[str, list[float]] = {k: [] for k in bench.kinds}
    p99: dict[str, list[float]] = {k: [] for k in bench.kinds}
    raw: dict[str, list[list[float]]] = {k: [] for k in bench.kinds}
    attach_kinds = [k for k in bench.kinds if k != "raw"]
    attach50: dict[str, list[float]] = {k: [] for k in attach_kinds}
    attach99: dict[str, list[float]] = {k: [] for k in attach_kinds}
    library50: list[float] = []
    for _ in range(bench.options.runs):
        for kind in bench.kinds:
            async with bench.console(kind, "echo R; exec cat", "echo") as console:
                tap: Tap
                if isinstance(console, ConsoledConsole):
                    tap = await trio.to_thread.run_sync(partial(console.open_tap, framed=True))
                else:
                    tap = await trio.to_thread.run_sync(console.open_tap)
                await console.start()
                await trio.to_thread.run_sync(tap.read_until, READY)
                samples = await trio.to_thread.run_sync(_echo_trips, tap, trips)
                if isinstance(console, ConsoledConsole):
                    # The same trips with the project's protocol library (consoled attach's).
                    tap.close()
                    console.taps.remove(tap)
                    tap = await trio.to_thread.run_sync(partial(console.open_tap, replay=0))
                    library = await trio.to_thread.run_sync(_echo_trips, tap, trips)
                    library50.append(percentile(library, 0.50))
                if kind in attach_kinds:
                    joins = await trio.to_thread.run_sync(_attach_trips, console, attaches)
                    attach50[kind].append(percentile(joins, 0.50))
                    attach99[kind].append(percentile(joins, 0.99))
            p50[kind].append(percentile(samples, 0.50))
            p99[kind].append(percentile(samples, 0.99))
            raw[kind].append(samples)
    figures = [
        Figure(
            "4 echo",
            "round trip p50",
            "us",
            Summary.of(p50["consoled"]),
            ("<=", 100.0),
            {k: Summary.of(v) for k, v in p50.items() if k != "consoled"},
        ),
        Figure(
            "4 echo",
            "round trip p99",
            "us",
            Summary.of(p99["consoled"]),
            ("<=", 400.0),
            {k: Summary.of(v) for k, v in p99.items() if k != "consoled"},
        ),
        Figure(
            "4 echo",
            "round trip p50, the client speaking through consoled.client",
            "us",
            Summary.of(library50),
            None,
            {},
        ),
        Figure(
            "4 echo",
            "attach: connect to first echo, p50",
            "us",
            Summary.of(attach50["consoled"]),
            None,
            {k: Summary.of(v) for k, v in attach50.items() if k != "consoled"},
        ),
        Figure(
            "4 echo",
            "attach: connect to first echo, p99",
            "us",
            Summary.of(attach99["consoled"]),
            None,
            {k: Summary.of(v) for k, v in attach99.items() if k != "consoled"},
        ),
    ]
    data = {
        "trips": trips,
        "attaches": attaches,
        "attach_p50_us": attach50,
        "attach_p99_us": attach99,
        "p50_us": p50,
        "p99_us": p99,
        "library_p50_us": library50,
        "max_us": {k: [max(s) for s in v] for k, v in raw.items()},
    }
    return figures, data


def _resizes(
    console: Console, tap: Tap, count: int, slave: int | None, *, request: bool = False
) -> tuple[list[float], list[float], int]:
    """Resize ``count`` times: consoled's attached client sends its window
    size, or with ``request`` a control connection sends ``resize``.

    Returns:
        Latencies in microseconds until the size was in force and until the
        console answered (a consoled request only), and how often ``stty
        size`` showed another size.
    """
    in_force: list[float] = []
    answered: list[float] = []
    wrong = 0
    pending = b""
    perf = time.perf_counter_ns
    window = tap if isinstance(tap, ConsoledTap) and not request else None
    for i in range(count):
        rows, cols = 30 + i % 200, 90 + i % 150
        t = perf()
        if window is not None:
            window.send_size(rows, cols)
        else:
            console.request_resize(rows, cols)
        if slave is not None:  # watch the container's terminal itself
            deadline = time.monotonic() + 5
            while get_winsize(slave) != (rows, cols) and time.monotonic() < deadline:
                pass
        seen = perf()
        if window is None:
            console.resize_answered()
        done = perf()
        in_force.append(((seen if slave is not None else done) - t) / 1000)
        if isinstance(console, ConsoledConsole) and request:
            answered.append((done - t) / 1000)
        tap.send(b"\n")
        while (match := SIZE_LINE.search(pending)) is None:
            data = tap.recv()
            if not data:
                raise EOFError("terminal closed during the resize test")
            pending += data
        pending = pending[match.end() :]
        if (int(match[1]), int(match[2])) != (rows, cols):
            wrong += 1
    return in_force, answered, wrong


async def resize(bench: Bench) -> tuple[list[Figure], dict[str, object]]:
    count = bench.options.size(100, 10)
    script = "stty -echo; echo R; while read x; do stty size; done"
    p50: dict[str, list[float]] = {k: [] for k in bench.kinds}
    request50: list[float] = []
    reply50: list[float] = []
    wrong: dict[str, list[float]] = {k: [] for k in bench.kinds}
    for _ in range(bench.options.runs):
        for kind in bench.kinds:
            async with bench.console(kind, script, "size") as console:
                tap = await trio.to_thread.run_sync(console.open_tap)
                await console.start()
                await trio.to_thread.run_sync(tap.read_until, READY)
                slave = None
                if isinstance(console, ConmonConsole | ConsoledConsole):
                    pid = await console.container_pid()
                    slave = os.open(f"/proc/{pid}/fd/0", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
                try:
                    lat, _, bad = await trio.to_thread.run_sync(
                        _resizes, console, tap, count, slave
                    )
                    if isinstance(console, ConsoledConsole):
                        requested, replies, bad_requested = await trio.to_thread.run_sync(
                            partial(_resizes, console, tap, count, slave, request=True)
                        )
                        request50.append(percentile(requested, 0.5))
                        reply50.append(percentile(replies, 0.5))
                        bad += bad_requested
                finally:
                    if slave is not None:
                        os.close(slave)
            p50[kind].append(percentile(lat, 0.5))
            wrong[kind].append(float(bad))
    figures = [
        Figure(
            "5 resize",
            "resize in force, p50",
            "us",
            Summary.of(p50["consoled"]),
            ("<=", 500.0),
            {k: Summary.of(v) for k, v in p50.items() if k != "consoled"},
        ),
        Figure(
            "5 resize",
            "resize request in force, p50",
            "us",
            Summary.of(request50),
            None,
            {},
        ),
        Figure(
            "5 resize",
            "resize request to its reply, p50",
            "us",
            Summary.of(reply50),
            None,
            {},
        ),
        Figure(
            "5 resize",
            f"stty size showing another size (of {count}/run, consoled {2 * count})",
            "count",
            Summary.of([max(wrong["consoled"], default=math.nan)]),
            ("<=", 0.0),
            {
                k: Summary.of([max(v, default=math.nan)])
                for k, v in wrong.items()
                if k != "consoled"
            },
        ),
    ]
    return figures, {
        "resizes": count,
        "p50_us": p50,
        "request_p50_us": request50,
        "reply_p50_us": reply50,
        "wrong": wrong,
    }
