"""A process that hands over a master under any runtime command line it is given.

For runtime subcommands that cannot run here (``runc restore`` needs CRIU,
whose Debian 12 build fails its self-check on this kernel; Debian's crun is
built without CRIU), the daemon's naming is tested with this stand-in: it
rewrites its own command line (``/proc/self/cmdline`` shows what is written
over the original argv area, through ``/proc/self/mem``), then does what the
runtime does with ``--console-socket``: opens a pty, connects, sends the
master (payload ``/dev/ptmx``), and writes a line to the terminal.  It holds
the slave until its stdin closes.

Usage: ``python fakeruntime.py PADDING ARGV...``: PADDING is any argument
long enough that ARGV fits in the original argv area.  Standard library only.
"""

from __future__ import annotations

import array
import os
import socket
import sys


def set_cmdline(argv: list[str]) -> None:
    """Make /proc/self/cmdline read ``argv`` (it must fit the original argv area)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # stat fields 48 and 49
    data = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    room = arg_end - arg_start
    if len(data) > room:
        raise SystemExit(f"fakeruntime: {len(data)} bytes of argv do not fit in {room}")
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(arg_start)
        mem.write(data + b"\0" * (room - len(data)))


def main() -> int:
    argv = sys.argv[2:]
    path = next(a.partition("=")[2] or argv[i + 1] for i, a in enumerate(argv)
                if a.split("=")[0] == "--console-socket")  # fmt: skip
    set_cmdline(argv)
    master, slave = os.openpty()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        fds = array.array("i", [master])
        sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    os.close(master)
    os.write(slave, b"restored-and-talking\n")
    print("sent", flush=True)
    sys.stdin.read()
    os.close(slave)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
