"""A stand-in for consoled under systemd: one pty master kept in the fd store.

Run as a ``Type=notify`` service by :mod:`tests.test_usermanager`, as the
test user, from the service venv (stdlib only)::

    python fdstore_service.py HELPER_SOCKET RESULT_FILE

On a fresh start it receives a pty master over SCM_RIGHTS from the root
helper listening on HELPER_SOCKET, hands it to systemd with ``FDSTORE=1``
and ``FDNAME=pty``, then says ``READY=1``.  Started again after a crash, it
finds the master in ``LISTEN_FDS``/``LISTEN_FDNAMES`` instead, and reads
what the terminal wrote meanwhile.  Each start appends one JSON line to
RESULT_FILE (before ``READY=1``, so it is there once the unit is active).
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence

SD_LISTEN_FDS_START = 3
FD_NAME = "pty"
#: Seconds to wait for the first byte on a restored master, then for more.
FIRST_BYTE_TIMEOUT = 5.0
QUIET_TIMEOUT = 0.2


def listen_fds() -> list[tuple[str, int]]:
    """The fds systemd passed to this process, with their names."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    names += ["unknown"] * (count - len(names))
    return [(names[i], SD_LISTEN_FDS_START + i) for i in range(count)]


def notify(state: str, fds: Sequence[int] = ()) -> None:
    """Send ``state`` (and ``fds``) to systemd on $NOTIFY_SOCKET."""
    path = os.environ["NOTIFY_SOCKET"]
    address = "\0" + path[1:] if path.startswith("@") else path
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendmsg([state.encode()], ancillary if fds else [], 0, address)


def receive_master(path: str) -> int:
    """Connect to the root helper and take the one fd it sends."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(path)
        fds = array.array("i")
        _, ancdata, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise SystemExit(f"expected one fd from {path}, got {len(fds)}")
    return fds[0]


def read_buffered(fd: int) -> bytes:
    """What the terminal has written: wait for a first byte, then until quiet."""
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    timeout = FIRST_BYTE_TIMEOUT
    while poller.poll(timeout * 1000):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
        timeout = QUIET_TIMEOUT
    return data


def record(path: str, **fields: object) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")


def main(helper_socket: str, result_file: str) -> None:
    passed = listen_fds()
    restored = [fd for name, fd in passed if name == FD_NAME]
    if restored:
        master = restored[0]
        data = read_buffered(master)
        record(
            result_file,
            restored=True,
            names=[name for name, _ in passed],
            isatty=os.isatty(master),
            data=data.decode("latin-1"),
        )
    else:
        master = receive_master(helper_socket)
        notify(f"FDSTORE=1\nFDNAME={FD_NAME}", [master])
        record(result_file, restored=False, names=[], isatty=os.isatty(master), data="")
    notify("READY=1")
    while True:  # hold the master, as consoled would, until killed
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
