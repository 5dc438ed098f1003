"""One reading client of the streaming scenarios, in a process of its own.

Readers run as separate processes so that eight of them do not share one
interpreter lock, and so that each costs what a real client costs.  The
parent talks to a sink over its stdin and stdout, one line at a time::

    sink -> "attached"         connected (and attached): start the container
    sink -> "ready"            the container's marker arrived
    parent -> "go"             (the first reader only) send the go line now
    sink -> "t0 SECONDS"       when it sent it (time.monotonic, system-wide)
    sink -> "done SECONDS CPU" when the last byte arrived (or the stream ended),
                               and the CPU seconds the reader used since "ready"
    sink -> "error TEXT"       it failed

A ``--slow`` sink attaches and never reads until the parent says ``drain``;
it then reads its connection to the end and answers ``ended REASON``.

Usage: ``python -m benchmarks.sink KIND TARGET NBYTES [--until-end] [--slow]`` where
KIND is ``raw`` (TARGET: an inherited master fd), ``consoled`` (TARGET:
CONTROL_SOCKET:SESSION) or ``conmon`` (TARGET: its attach socket).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from .taps import ConmonTap, ConsoledTap, RawTap, Tap

MARKER = b"R\r\n"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def open_tap(kind: str, target: str) -> Tap:
    if kind == "raw":
        return RawTap(int(target))
    if kind == "consoled":
        from consoled.client.conn import Client
        from consoled.protocol import events as ev

        control, _, session = target.rpartition(":")
        client = Client(control, timeout=30)
        client.call(ev.Attach(session), ev.Attached)
        return ConsoledTap(client)
    if kind == "conmon":
        from pathlib import Path

        return ConmonTap(Path(target))
    raise ValueError(kind)


def read(tap: Tap, nbytes: int, until_end: bool, stall: float) -> None:
    got = len(tap.read_until(MARKER))
    cpu0 = _cpu()
    say("ready")
    tap.settimeout(stall)
    if sys.stdin.readline().strip() == "go":
        t0 = time.monotonic()
        tap.send(b"\n")
        say(f"t0 {t0!r}")
    while got < nbytes:
        data = tap.recv()
        if not data:
            ended = getattr(tap, "ended", None)
            raise EOFError(f"stream ended after {got} of {nbytes} bytes ({ended})")
        got += len(data)
    if until_end:  # the container must have finished: its terminal hangs up
        while tap.recv():
            pass
    end = time.monotonic()
    say(f"done {end!r} {_cpu() - cpu0!r}")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drain(tap: Tap) -> None:
    sys.stdin.readline()  # "drain"
    tap.settimeout(5)
    try:
        while tap.recv():
            pass
    except (TimeoutError, OSError) as exc:
        say(f"ended none ({exc!r})")
        return
    ended = getattr(tap, "ended", None)
    say(f"ended {ended.reason if ended is not None else 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sink")
    parser.add_argument("kind", choices=("raw", "consoled", "conmon"))
    parser.add_argument("target")
    parser.add_argument("nbytes", type=int)
    parser.add_argument("--until-end", action="store_true")
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--stall", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        tap = open_tap(args.kind, args.target)
        say("attached")
        if args.slow:
            drain(tap)
        else:
            read(tap, args.nbytes, args.until_end, args.stall)
    except TimeoutError:
        say("error stalled")
        return 1
    except Exception as exc:
        say(f"error {exc!r}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
