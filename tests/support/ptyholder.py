"""A process that stands in for many containers: opens ptys, hands the masters
over as a runtime does, holds the slaves (the benchmarks' scale scenario, the
reexec and crash tests).

Commands, one per line on stdin:

- ``hand PATH``: open a pty, connect to the console socket PATH and send the
  master exactly as a runtime does (one message, payload ``/dev/ptmx``, the
  fd in SCM_RIGHTS), close our copy of the master, keep the slave open.
- ``write N``: write N bytes to every slave not written to yet; answers ``written K``.
- ``say I TEXT``: write TEXT and a newline to slave number I (from 0); answers ``said I``.
- ``hangups``: answers ``hangups K``: how many slaves saw their master go
  (POLLHUP: the terminal hung up).
- ``wait-hangups K SECONDS``: waits (poll) until K slaves saw a hangup or
  SECONDS pass; answers ``hangups K``.
- ``sync``: answers ``ok COUNT`` once every earlier command is done.

End of input closes every slave (the sessions' terminals hang up) and exits.
Standard library only.
"""

from __future__ import annotations

import array
import os
import resource
import select
import socket
import sys
import time


def hand(path: str) -> int:
    master, slave = os.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            fds = array.array("i", [master])
            sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    except BaseException:
        os.close(slave)
        raise
    finally:
        os.close(master)
    return slave


def hung_up(fds: list[int], deadline: float) -> set[int]:
    """The fds among ``fds`` that report POLLHUP, waiting until ``deadline`` for one."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # POLLHUP is always reported
    timeout = max(0, int((deadline - time.monotonic()) * 1000)) if deadline else 0
    return {fd for fd, mask in poller.poll(timeout) if mask & select.POLLHUP}


def main() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    slaves: list[int] = []
    written = 0
    for raw in sys.stdin:
        command, _, arg = raw.strip().partition(" ")
        if command == "hand":
            try:
                slaves.append(hand(arg))
            except OSError as exc:
                print(f"ptyholder: {arg}: {exc}", file=sys.stderr, flush=True)
        elif command == "write":
            data = b"x" * int(arg)
            for fd in slaves[written:]:
                os.write(fd, data)
            print(f"written {len(slaves) - written}", flush=True)
            written = len(slaves)
        elif command == "say":
            index, _, text = arg.partition(" ")
            os.write(slaves[int(index)], text.encode() + b"\n")
            print(f"said {index}", flush=True)
        elif command == "hangups":
            print(f"hangups {len(hung_up(slaves, 0))}", flush=True)
        elif command == "wait-hangups":
            want, _, within = arg.partition(" ")
            deadline = time.monotonic() + float(within)
            hups = hung_up(slaves, 0)
            while len(hups) < int(want) and time.monotonic() < deadline:
                # poll() wakes on the next hangup; those already seen are left out.
                hups |= hung_up([fd for fd in slaves if fd not in hups], deadline)
            print(f"hangups {len(hups)}", flush=True)
        elif command == "sync":
            print(f"ok {len(slaves)}", flush=True)
    for fd in slaves:
        os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
