"""A file whose reads wait until the test lets them go: a disk that stops answering.

A FUSE file system with one regular file, ``data``, served by this script
(run as ``python -m tests.support.hangfs MOUNTPOINT CONTENT``; standard
library only, root).  Its file is opened with direct I/O, so every
``read(2)`` of it comes here, past the page cache.  Whoever reads it while
the file system is *hung* waits in the kernel, uninterruptibly as on an NFS
server that went away, until the test lets the reads go or the server exits
(then they fail: the connection is gone).  ``fsfreeze`` cannot do that: a
frozen file system still reads.

Commands, one per line on stdin, each answered on stdout:

- ``hang``: reads wait from now on; answers ``hung``.
- ``serve``: held reads are answered, and every read from now on; answers
  ``serving``.

Besides the answers, the server says ``mounted`` once the file system is up,
and ``read OFFSET SIZE held`` (or ``served``) for every read of the file.
End of input, or a signal, ends it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import sys
import threading

_IN_HEADER = struct.Struct("<IIQQIIIHH")
_OUT_HEADER = struct.Struct("<IiQ")
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
_READ_IN = struct.Struct("<QQII")

LOOKUP, FORGET, GETATTR, OPEN, READ, RELEASE, FLUSH = 1, 2, 3, 14, 15, 18, 25
INIT, OPENDIR, RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET = 26, 27, 29, 36, 38, 42
_NO_REPLY = {FORGET, INTERRUPT, BATCH_FORGET}
FOPEN_DIRECT_IO = 1
ROOT, FILE = 1, 2
NAME = b"data"
MS_NOSUID, MS_NODEV = 2, 4


class Server:
    def __init__(self, dev: int, content: bytes) -> None:
        self.dev = dev
        self.content = content
        self.hung = False
        self.held: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()
        self.out = threading.Lock()

    def say(self, line: str) -> None:
        with self.out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def reply(self, unique: int, payload: bytes = b"", error: int = 0) -> None:
        header = _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), -error, unique)
        try:
            os.write(self.dev, header + payload)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # the request was interrupted meanwhile
                raise

    def attr(self, node: int) -> bytes:
        if node == ROOT:
            mode, size, nlink = stat.S_IFDIR | 0o755, 0, 2
        else:
            mode, size, nlink = stat.S_IFREG | 0o644, len(self.content), 1
        return _ATTR.pack(node, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, nlink, 0, 0, 0,
                          4096, 0)  # fmt: skip

    def read(self, unique: int, offset: int, size: int) -> None:
        with self.lock:
            if self.hung:
                self.held.append((unique, offset, size))
                self.say(f"read {offset} {size} held")
                return
        self.reply(unique, self.content[offset : offset + size])
        self.say(f"read {offset} {size} served")

    def serve(self) -> None:
        with self.lock:
            self.hung = False
            held, self.held = self.held, []
        for unique, offset, size in held:
            self.reply(unique, self.content[offset : offset + size])

    def handle(self, request: bytes) -> None:
        _, opcode, unique, node, *_ = _IN_HEADER.unpack_from(request)
        body = request[_IN_HEADER.size :]
        if opcode in _NO_REPLY:
            return
        if opcode == INIT:
            major, minor = struct.unpack_from("<II", body)
            if major != 7:
                self.reply(unique, error=errno.EPROTO)
                return
            minor = min(minor, 31)
            self.reply(unique, _INIT_OUT.pack(7, minor, 0, 0, 16, 12, 65536, 1, 16, 0, 0,
                                              *[0] * 7))  # fmt: skip
        elif opcode == LOOKUP:
            if node == ROOT and body.rstrip(b"\0") == NAME:
                entry = struct.pack("<QQQQII", FILE, 1, 3600, 3600, 0, 0)
                self.reply(unique, entry + self.attr(FILE))
            else:
                self.reply(unique, error=errno.ENOENT)
        elif opcode == GETATTR:
            self.reply(unique, struct.pack("<QII", 3600, 0, 0) + self.attr(node))
        elif opcode in (OPEN, OPENDIR):
            self.reply(unique, struct.pack("<QII", 0, FOPEN_DIRECT_IO if opcode == OPEN else 0, 0))
        elif opcode == READ:
            _, offset, size, _ = _READ_IN.unpack_from(body)
            self.read(unique, offset, size)
        elif opcode in (RELEASE, RELEASEDIR, FLUSH, DESTROY):
            self.reply(unique)
        else:
            self.reply(unique, error=errno.ENOSYS)

    def run(self) -> None:
        while True:
            try:
                request = os.read(self.dev, 1 << 20)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return  # ENODEV: unmounted
            self.handle(request)


def commands(server: Server) -> None:
    for line in sys.stdin:
        word = line.strip()
        if word == "hang":
            with server.lock:
                server.hung = True
            server.say("hung")
        elif word == "serve":
            server.serve()
            server.say("serving")
    os._exit(0)


def main() -> None:
    mountpoint, content = sys.argv[1], sys.argv[2].encode()
    dev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={dev},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"hangfs", mountpoint.encode(), b"fuse", MS_NOSUID | MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mounting FUSE on {mountpoint}: {os.strerror(err)}")
    server = Server(dev, content)
    threading.Thread(target=commands, args=(server,), daemon=True).start()
    server.say("mounted")
    server.run()


if __name__ == "__main__":
    main()
