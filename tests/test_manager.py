"""The service manager's notification socket, read by a test in the manager's place.

A manager that reads slowly (systemd busy, or the kernel's datagram queue of
only ``net.unix.max_dgram_qlen`` messages) makes the daemon queue its
``FDSTORE`` messages.  The queue must hold the fds' owners, not duplicates:
thousands of sessions arriving at once would otherwise double the daemon's
open files and run it into its limit.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from consoled.io.fds import OwnedFd
from consoled.io.manager import ServiceManager

#: Bound on any one wait in these tests.
TIMEOUT = 10.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def reader(short_tmp: Path) -> Iterator[socket.socket]:
    """The manager's end: a datagram socket nobody reads until the test does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_tmp / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


def receive_all(sock: socket.socket) -> list[tuple[str, list[int]]]:
    """Every datagram waiting, with the fds it carried (the caller closes them)."""
    got: list[tuple[str, list[int]]] = []
    while True:
        fds = array.array("i")
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
        except BlockingIOError:
            return got
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        got.append((data.decode(), list(fds)))


async def test_queued_stores_hold_no_duplicate_fds(reader: socket.socket) -> None:
    manager = ServiceManager({"NOTIFY_SOCKET": reader.getsockname()})
    owners = [OwnedFd(os.memfd_create(f"t{n}", os.MFD_CLOEXEC), "test") for n in range(300)]
    try:
        before = open_fds()
        for n, owner in enumerate(owners):
            manager.store(f"s{n}.pty", owner)
        # The socket took a few (net.unix.max_dgram_qlen); the rest wait, and
        # waiting costs no fds.  Was: a duplicate of each, 290 more open files.
        sent = receive_all(reader)
        assert 0 < len(sent) < len(owners)
        assert open_fds() == before + sum(len(fds) for _, fds in sent)
        for _, fds in sent:
            for fd in fds:
                os.close(fd)
        # Some sessions go before their turn comes: their fds are not stored.
        gone = {n for n in range(len(sent), len(owners), 3)}
        for n in gone:
            owners[n].close()
        stored: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.run)
            with trio.fail_after(TIMEOUT):
                while len(stored) < len(owners) - len(sent) - len(gone):
                    for message, fds in receive_all(reader):
                        name = message.rpartition("FDNAME=")[2]
                        assert message.startswith("FDSTORE=1\n"), message
                        assert len(fds) == 1, (message, fds)
                        assert name not in stored, name
                        stored[name] = fds[0]
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        try:
            expected = {f"s{n}.pty" for n in range(len(sent), len(owners)) if n not in gone}
            assert set(stored) == expected
            assert manager.skipped == len(gone)
            # Each stored fd is the owner's file, not something that took its number.
            for name, fd in stored.items():
                owner = owners[int(name[1:].partition(".")[0])]
                assert os.fstat(fd).st_ino == os.fstat(owner.fd).st_ino
        finally:
            for fd in stored.values():
                os.close(fd)
    finally:
        for owner in owners:
            owner.close()
        manager.close()


async def test_a_successor_makes_the_fd_store_changes_its_predecessor_had_not_sent(
    reader: socket.socket,
) -> None:
    # Changes still queued when a reexec hands over would be lost with the old
    # process; a crash after that would lose those sessions.  The old daemon
    # lists them in the handover, and the new one makes them with its own fds.
    old = ServiceManager({"NOTIFY_SOCKET": reader.getsockname()})
    new = ServiceManager({"NOTIFY_SOCKET": reader.getsockname()})
    owners = {f"s{n}.pty": OwnedFd(os.memfd_create(f"h{n}", os.MFD_CLOEXEC)) for n in range(40)}
    theirs = {name: owner.dup() for name, owner in owners.items()}  # the successor's copies
    try:
        for name, owner in owners.items():
            old.store(name, owner)
        old.unstore("s3.pty")
        owners["s5.pty"].close()  # its session went before the store was sent
        for _, fds in receive_all(reader):  # what the manager got before the handover
            for fd in fds:
                os.close(fd)
        changes = old.pending_fd_store()
        queued = [name for name in owners if ("store", name) in changes]
        assert queued and "s5.pty" not in queued
        assert changes[-1] == ("remove", "s3.pty")
        # Through the handover's msgpack: lists, not tuples; and junk is skipped.
        made, skipped = new.replay_fd_store(
            [list(c) for c in changes] + [["store", "s99.pty"], "junk"], theirs
        )
        assert made == len(changes)
        assert skipped == ["s99.pty", "'junk'"]
        got: list[tuple[str, list[int]]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(new.run)
            with trio.fail_after(TIMEOUT):
                while len(got) < made:
                    got += receive_all(reader)
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        try:
            assert [m for m, _ in got] == [f"FDSTORE=1\nFDNAME={name}" for name in queued] + [
                "FDSTOREREMOVE=1\nFDNAME=s3.pty"
            ]
            for (message, fds), name in zip(got, queued, strict=False):
                assert len(fds) == 1, message
                assert os.fstat(fds[0]).st_ino == os.fstat(theirs[name].fd).st_ino
        finally:
            for _, fds in got:
                for fd in fds:
                    os.close(fd)
    finally:
        for owner in [*owners.values(), *theirs.values()]:
            owner.close()
        old.close()
        new.close()
