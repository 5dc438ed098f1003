"""A root helper that lends a pty master to whoever connects, and keeps the slave.

Run by :mod:`tests.test_usermanager` as root::

    python ptyserver.py SOCKET UID

It opens a pty (slave in raw mode), listens on SOCKET (owned by UID, so the
test user's service can connect), sends the master to the first peer over
SCM_RIGHTS and closes its own copy: from then on the slave's only peer is
whoever holds that master.  It keeps the slave open, as a container's
process would, and watches it for a hangup (POLLHUP: every copy of the
master was closed).

It talks on stdin/stdout, one line each way:

- prints ``listening``, then ``sent`` once the master is handed out;
- ``write HEX`` writes those bytes to the slave, answers ``wrote``;
- ``status`` answers ``hangup`` if the slave ever saw one, else ``ok``;
- a hangup is also reported when it happens, as ``hangup``;
- end of input: exit.
"""

from __future__ import annotations

import array
import os
import select
import socket
import sys
import tty


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def hand_out(master: int, path: str, uid: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as listener:
        listener.bind(path)
        os.chown(path, uid, -1)
        os.chmod(path, 0o600)
        listener.listen(1)
        say("listening")
        conn, _ = listener.accept()
        with conn:
            fds = array.array("i", [master])
            conn.sendmsg([b"m"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    os.unlink(path)


def main(path: str, uid: int) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    hand_out(master, path, uid)
    os.close(master)
    say("sent")
    hangup = False
    poller = select.poll()
    poller.register(sys.stdin.fileno(), select.POLLIN)
    poller.register(slave, 0)  # POLLHUP and POLLERR are always reported
    pending = b""
    while True:
        for fd, _ in poller.poll():
            if fd == slave:
                hangup = True
                poller.unregister(slave)
                say("hangup")
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                command, _, arg = line.decode().strip().partition(" ")
                if command == "write":
                    os.write(slave, bytes.fromhex(arg))
                    say("wrote")
                elif command == "status":
                    say("hangup" if hangup else "ok")
                else:
                    say(f"error unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
