"""A process that stands in for many containers: opens ptys, hands the masters
over as a runtime does, holds the slaves (the benchmarks' scale scenario, the
reexec, crash, fuzz and load tests).

Commands, one per line on stdin, are served in order:

- ``hand PATH``: open a pty, connect to the console socket PATH and send the
  master exactly as a runtime does (one message, payload ``/dev/ptmx``, the
  fd in SCM_RIGHTS), close our copy of the master, keep the slave open.
- ``write N``: write N bytes to every slave not written to yet; answers ``written K``.
- ``say I TEXT``: write TEXT and a newline to slave number I (from 0); answers ``said I``.
- ``hangups``: answers ``hangups K``: how many slaves saw their master go
  (POLLHUP: the terminal hung up).
- ``wait-hangups K SECONDS``: waits (poll) until K slaves saw a hangup or
  SECONDS pass; answers ``hangups K``.  Streams pause meanwhile.
- ``stream I SECONDS RATE``: puts slave I in raw mode (no echo, no output
  processing: the master reads exactly what is written) and writes numbered
  lines to it for SECONDS seconds, RATE lines a second (0: as fast as the
  terminal takes them), while later commands are served; answers
  ``streaming I`` at once.  Line N (from 1) is :func:`line` (I, N), 64 bytes;
  the last line is always written whole.  Several slaves may stream at once.
- ``wait-streams SECONDS``: waits until every stream has ended, or SECONDS
  pass; answers ``streamed I:N ...`` (each stream's slave and the lines it
  wrote, sorted) or, on a timeout, ``unfinished I:N ...``.  Later commands
  wait for the answer; streams go on.
- ``sink I``: puts slave I in raw mode and reads and discards its input from
  now on, as a program reading its terminal would; answers ``sinking I``.
- ``raw I``: puts slave I in raw mode and leaves its input unread (a program
  that does not read its terminal: the kernel's input buffer fills);
  answers ``raw I``.
- ``drain I SIZE SECONDS PATH``: reads slave I's input until SIZE bytes
  came or SECONDS passed, writes them to PATH; answers ``drained N``.
- ``sync``: answers ``ok COUNT`` (the slaves held) once every earlier command is done.

``say`` and ``write`` on a streaming slave mix their bytes into its lines.
End of input closes every slave (the sessions' terminals hang up) and exits,
whatever is still streaming.  Standard library only.
"""

from __future__ import annotations

import array
import errno
import os
import resource
import select
import socket
import sys
import time
import tty

#: Bytes of one numbered line.
LINE_SIZE = 64


def line(index: int, number: int) -> bytes:
    """Line ``number`` (from 1) that ``stream`` writes to slave ``index``."""
    head = f"{index:04d} {number:09d} "
    return (head + "-" * (LINE_SIZE - 1 - len(head)) + "\n").encode()


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


def write_fully(fd: int, data: bytes) -> None:
    """Write all of ``data``, waiting for a slave that was made non-blocking."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def read_up_to(fd: int, size: int, deadline: float) -> bytes:
    """Read from ``fd`` until ``size`` bytes have come or the deadline passed."""
    got = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while len(got) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            break
        try:
            got += os.read(fd, size - len(got))
        except BlockingIOError:
            continue
        except OSError:
            break  # hung up
    return bytes(got)


def hung_up(fds: list[int], deadline: float) -> set[int]:
    """The fds among ``fds`` that report POLLHUP, waiting until ``deadline`` for one."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # POLLHUP is always reported
    timeout = max(0, int((deadline - time.monotonic()) * 1000)) if deadline else 0
    return {fd for fd, mask in poller.poll(timeout) if mask & select.POLLHUP}


class Stream:
    """Numbered lines written to one slave, paced, without ever blocking the holder."""

    def __init__(self, index: int, fd: int, seconds: float, rate: float) -> None:
        self.index = index
        self.fd = fd
        self.rate = rate
        self.start = time.monotonic()
        self.stop = self.start + seconds
        self.lines = 0  # lines generated (all of them written once ``out`` is empty)
        self.out = bytearray()
        self.done = False
        tty.setraw(fd)
        os.set_blocking(fd, False)

    def next_due(self) -> float:
        """When the next line is due (0: now)."""
        if self.rate <= 0:
            return 0.0
        return self.start + self.lines / self.rate

    def fill(self, now: float) -> None:
        if now >= self.stop:
            return
        if self.rate > 0:
            due = int((now - self.start) * self.rate) + 1 - self.lines
        else:
            due = max(0, 256 - len(self.out) // LINE_SIZE)
        for _ in range(max(0, min(due, 1024))):
            self.lines += 1
            self.out += line(self.index, self.lines)

    def pump(self, now: float) -> None:
        """Write what the terminal takes now; ends the stream once its time is up."""
        self.fill(now)
        while self.out:
            try:
                written = os.write(self.fd, self.out)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                print(f"ptyholder: stream {self.index}: the terminal hung up", file=sys.stderr)
                self.out.clear()
                self.done = True
                return
            del self.out[:written]
            self.fill(now)
        if not self.out and now >= self.stop:
            self.done = True


class Holder:
    def __init__(self) -> None:
        self.slaves: list[int] = []
        self.written = 0
        self.streams: dict[int, Stream] = {}
        self.sinks: set[int] = set()
        #: A ``wait-streams`` being waited for: its deadline.
        self.waiting: float | None = None

    def command(self, text: str) -> None:
        command, _, arg = text.strip().partition(" ")
        if command == "hand":
            try:
                self.slaves.append(hand(arg))
            except OSError as exc:
                print(f"ptyholder: {arg}: {exc}", file=sys.stderr, flush=True)
        elif command == "write":
            data = b"x" * int(arg)
            for fd in self.slaves[self.written :]:
                write_fully(fd, data)
            print(f"written {len(self.slaves) - self.written}", flush=True)
            self.written = len(self.slaves)
        elif command == "say":
            index, _, text = arg.partition(" ")
            write_fully(self.slaves[int(index)], text.encode() + b"\n")
            print(f"said {index}", flush=True)
        elif command == "hangups":
            print(f"hangups {len(hung_up(self.slaves, 0))}", flush=True)
        elif command == "wait-hangups":
            want, _, within = arg.partition(" ")
            deadline = time.monotonic() + float(within)
            hups = hung_up(self.slaves, 0)
            while len(hups) < int(want) and time.monotonic() < deadline:
                # poll() wakes on the next hangup; those already seen are left out.
                hups |= hung_up([fd for fd in self.slaves if fd not in hups], deadline)
            print(f"hangups {len(hups)}", flush=True)
        elif command == "stream":
            index, seconds, rate = arg.split()
            i = int(index)
            self.streams[i] = Stream(i, self.slaves[i], float(seconds), float(rate))
            print(f"streaming {i}", flush=True)
        elif command == "wait-streams":
            self.waiting = time.monotonic() + float(arg)
        elif command == "sink":
            i = int(arg)
            tty.setraw(self.slaves[i])
            os.set_blocking(self.slaves[i], False)
            self.sinks.add(self.slaves[i])
            print(f"sinking {i}", flush=True)
        elif command == "raw":
            i = int(arg)
            tty.setraw(self.slaves[i])  # and nobody reads it: its input buffer fills
            print(f"raw {i}", flush=True)
        elif command == "drain":
            index, size, within, path = arg.split(" ", 3)
            got = read_up_to(self.slaves[int(index)], int(size), time.monotonic() + float(within))
            with open(path, "wb") as f:
                f.write(got)
            print(f"drained {len(got)}", flush=True)
        elif command == "sync":
            print(f"ok {len(self.slaves)}", flush=True)

    def answer_wait(self, now: float) -> None:
        """Answer a ``wait-streams`` whose streams ended or whose time is up."""
        if self.waiting is None:
            return
        done = all(s.done for s in self.streams.values())
        if not done and now < self.waiting:
            return
        counts = " ".join(f"{i}:{s.lines}" for i, s in sorted(self.streams.items()))
        print(f"{'streamed' if done else 'unfinished'} {counts}".strip(), flush=True)
        self.waiting = None

    def timeout(self, now: float) -> float | None:
        """Seconds until something is due without an fd being ready (None: nothing)."""
        times = [s.next_due() for s in self.streams.values() if not s.done and not s.out]
        times += [s.stop for s in self.streams.values() if not s.done]
        if self.waiting is not None:
            times.append(self.waiting)
        return max(0.0, min(times) - now) if times else None

    def serve(self) -> None:
        pending = b""
        eof = False
        while True:
            while self.waiting is None and b"\n" in pending:
                text, _, pending = pending.partition(b"\n")
                self.command(text.decode())
            if eof and self.waiting is None:
                return
            poller = select.poll()
            if not eof:
                poller.register(0, select.POLLIN)
            for stream in self.streams.values():
                if stream.out and not stream.done:
                    poller.register(stream.fd, select.POLLOUT)
            for fd in self.sinks:
                poller.register(fd, select.POLLIN)
            timeout = self.timeout(time.monotonic())
            ready = dict(poller.poll(None if timeout is None else int(timeout * 1000) + 1))
            if ready.pop(0, 0):
                chunk = os.read(0, 65536)
                eof = not chunk
                pending += chunk
            for fd in list(self.sinks):
                if fd in ready:
                    try:
                        os.read(fd, 65536)
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.sinks.discard(fd)  # hung up: nothing more to read
            now = time.monotonic()
            for stream in self.streams.values():
                if not stream.done:
                    stream.pump(now)
            self.answer_wait(now)

    def close(self) -> None:
        for fd in self.slaves:
            os.close(fd)


def main() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    holder = Holder()
    try:
        holder.serve()
    finally:
        holder.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
