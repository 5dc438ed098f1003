"""``python -m benchmarks.relayfloor``: what a keystroke's echo costs through a relay.

Not one of the scenarios (it needs a C compiler, and no consoled): it
measures the premise of the native pump (docs/performance.md, "Design note:
a native pump?").  A terminal runs ``cat`` in cooked mode, so the kernel
echoes each byte; a client sends one byte and waits for its echo, 1,000
times back to back (as scenario 4 does), through:

- ``raw``: nothing, the master itself;
- ``c-process``: a small C program relaying a socket and the master (what
  conmon is, without its logging);
- ``c-thread``: the same relay as a C thread in a Python process the size of
  the daemon (consoled's server imported, a trio loop waking every 50 ms),
  holding no GIL: what a native pump would be;
- ``threads``: two Python threads in that interpreter, each a blocking
  ``os.read`` and ``os.write`` (the GIL released in the calls);
- ``trio``: a relay of two trio tasks in that interpreter (the floor of a
  pure-Python pump on the event loop, with nothing of consoled's work in it).

The variants alternate, five rounds; medians of each round's p50 and p99.
``--quick``: 100 trips, one round (a smoke run).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRIPS = 1000
WARM = 100
ROUNDS = 5

RELAY_C = r"""
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct pair { int sock, master; };

static void *relay(void *arg) {
    struct pair p = *(struct pair *)arg;
    char buf[65536];
    struct pollfd fds[2] = {{p.sock, POLLIN, 0}, {p.master, POLLIN, 0}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return NULL;
        }
        for (int i = 0; i < 2; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            if (n <= 0) return NULL;
            int out = i == 0 ? p.master : p.sock;
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(out, buf + off, n - off);
                if (w < 0) return NULL;
                off += w;
            }
        }
    }
}

static struct pair started;

int relay_start(int sock, int master) {
    pthread_t t;
    started.sock = sock;
    started.master = master;
    if (pthread_create(&t, NULL, relay, &started)) return -1;
    return pthread_detach(t);
}

#ifdef MAIN
int main(int argc, char **argv) {
    struct pair p = {atoi(argv[1]), atoi(argv[2])};
    relay(&p);
    return 0;
}
#endif
"""

#: The Python hosts: the C relay as a thread, or two trio tasks; each says "ready".
HOST = r"""
import ctypes, os, sys, threading, trio
import consoled.server.daemon, consoled.server.session, consoled.terminal.screen
kind, lib, sock, master = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def blocking(a, b):
    while data := os.read(a, 65536):
        os.write(b, data)

async def relay(a, b):
    while True:
        await trio.lowlevel.wait_readable(a)
        try:
            data = os.read(a, 65536)
        except BlockingIOError:
            continue
        if not data:
            return
        os.write(b, data)

async def main():
    async with trio.open_nursery() as nursery:
        if kind == "c-thread":
            assert ctypes.CDLL(lib).relay_start(sock, master) == 0
        elif kind == "threads":
            for a, b in ((sock, master), (master, sock)):
                threading.Thread(target=blocking, args=(a, b), daemon=True).start()
        else:
            os.set_blocking(sock, False)
            os.set_blocking(master, False)
            nursery.start_soon(relay, sock, master)
            nursery.start_soon(relay, master, sock)
        while True:  # a daemon's loop wakes now and then
            print("ready", flush=True)
            await trio.sleep(0.05)

trio.run(main)
"""

VARIANTS = ("raw", "c-process", "c-thread", "threads", "trio")


def build(work: Path) -> tuple[Path, Path]:
    """The relay as a shared library and as a program."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("relayfloor: needs a C compiler (cc)")
    source = work / "relay.c"
    source.write_text(RELAY_C)
    lib, program = work / "librelay.so", work / "relay"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", lib, source], check=True)
    subprocess.run([cc, "-O2", "-DMAIN", "-pthread", "-o", program, source], check=True)
    return lib, program


def trips(fd: int, count: int) -> list[float]:
    """Round trips of one byte and its echo, in microseconds."""
    out = []
    perf = time.perf_counter_ns
    for i in range(WARM + count):
        t = perf()
        os.write(fd, b"a")
        got = b""
        while b"a" not in got:
            got += os.read(fd, 4096)
        if i >= WARM:
            out.append((perf() - t) / 1000)
    return sorted(out)


def measure(variant: str, lib: Path, program: Path, count: int = TRIPS) -> tuple[float, float]:
    """One run of ``variant``: its p50 and p99."""
    master, slave = os.openpty()
    cat = subprocess.Popen(["cat"], stdin=slave, stdout=subprocess.DEVNULL, start_new_session=True)
    helper = None
    ours, theirs = socket.socketpair()
    try:
        if variant == "raw":
            fd = master
        else:
            if variant == "c-process":
                argv = [str(program)]
            else:
                argv = [sys.executable, "-c", HOST, variant, str(lib)]
            helper = subprocess.Popen(
                [*argv, str(theirs.fileno()), str(master)],
                pass_fds=(theirs.fileno(), master),
                stdout=subprocess.PIPE,
            )
            if variant != "c-process":
                assert helper.stdout is not None
                if helper.stdout.readline() != b"ready\n":
                    raise RuntimeError(f"the {variant} host did not start")
            fd = ours.fileno()
        got = trips(fd, count)
        return got[len(got) // 2], got[len(got) * 99 // 100]
    finally:
        for proc in (helper, cat):
            if proc is not None:
                proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        ours.close()
        theirs.close()
        os.close(master)
        os.close(slave)


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    count, rounds = (100, 1) if quick else (TRIPS, ROUNDS)
    with tempfile.TemporaryDirectory(prefix="relayfloor-") as tmp:
        lib, program = build(Path(tmp))
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                runs[variant].append(measure(variant, lib, program, count))
    print(f"echo through a relay, {count} trips x {rounds} rounds (medians of the rounds)")
    for variant, got in runs.items():
        p50 = statistics.median(r[0] for r in got)
        p99 = statistics.median(r[1] for r in got)
        print(f"{variant:10s} p50 {p50:6.1f} us   p99 {p99:6.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
