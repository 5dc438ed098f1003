"""Receiving pty masters over SCM_RIGHTS with real fds, OwnedFd, and the bounded Subscriber.

Every rejection must close every fd that arrived: each test compares this
process's fd table (``/proc/self/fd``) before and after the receive.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import gc
import os
import select
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from consoled.io.fdpass import (
    MAX_FDS,
    TIOCGPTN,
    IntakeError,
    check_master,
    pty_number,
    receive_fds,
    receive_master,
)
from consoled.io.fds import OwnedFd
from consoled.protocol.events import EndReason
from consoled.server.subscriber import Subscriber

TIMEOUT = 5


# --- helpers ------------------------------------------------------------------------------


def open_fds() -> dict[int, str]:
    """This process's open fds and what each points to."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the directory handle listdir itself had open
    return fds


def ioctl_ptn(fd: int) -> int:
    buf = array.array("I", [0])
    fcntl.ioctl(fd, TIOCGPTN, buf, True)
    return buf[0]


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def unix_pair(
    kind: int = socket.SOCK_STREAM,
) -> Iterator[tuple[socket.socket, trio.socket.SocketType]]:
    """A connected pair: a plain socket to send from, a trio socket to receive on."""
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, trio.socket.from_stdlib_socket(b) as tb:
        yield a, tb


def send_fds(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([payload], ancillary)


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture
def regular_file(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "file"
    path.write_bytes(b"not a terminal")
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


async def expect_rejected(
    receiver: trio.socket.SocketType, kind: str, before: dict[int, str]
) -> IntakeError:
    """receive_master must raise IntakeError(kind) and leave the fd table as it was."""
    with trio.fail_after(TIMEOUT), pytest.raises(IntakeError) as excinfo:
        await receive_master(receiver)
    # Checked while the traceback (and any holder in it) is still alive, so a
    # holder's __del__ cannot be what closed the fds.
    assert open_fds() == before
    assert excinfo.value.kind == kind, excinfo.value
    return excinfo.value


# --- receive_master: accepted -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        pytest.param(socket.SOCK_STREAM, b"/dev/ptmx", id="runc-1.1"),
        pytest.param(socket.SOCK_STREAM, b"/dev/pts/ptmx", id="runc-new"),
        pytest.param(socket.SOCK_STREAM, b" ", id="crun"),
        pytest.param(socket.SOCK_STREAM, b"\x00\xffanything at all" * 100, id="junk"),
        # A stream socket cannot carry fds without a payload byte; a seqpacket one can.
        pytest.param(socket.SOCK_SEQPACKET, b"", id="seqpacket-empty"),
        pytest.param(socket.SOCK_SEQPACKET, b"/dev/ptmx", id="seqpacket-ptmx"),
    ],
)
async def test_master_accepted_whatever_the_payload(
    pty: tuple[int, int], kind: int, payload: bytes
) -> None:
    master, slave = pty
    expected = ioctl_ptn(master)
    assert os.ttyname(slave) == f"/dev/pts/{expected}"
    with unix_pair(kind) as (sender, receiver):
        send_fds(sender, payload, [master])
        before = open_fds()
        with trio.fail_after(TIMEOUT):
            holder, number, got_payload = await receive_master(receiver)
        try:
            after = open_fds()
            assert set(after) - set(before) == {holder.fd}
            assert set(before) <= set(after)
            assert number == expected
            assert pty_number(holder.fd) == expected
            assert got_payload == payload
            assert stat.S_ISCHR(os.fstat(holder.fd).st_mode)
            # MSG_CMSG_CLOEXEC: the fd does not leak into children.
            assert fcntl.fcntl(holder.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            # It really is the same terminal: bytes written on the slave come out of it.
            os.write(slave, b"ping")
            assert select.select([holder.fd], [], [], TIMEOUT)[0] == [holder.fd]
            assert os.read(holder.fd, 100) == b"ping"
        finally:
            holder.close()
        assert open_fds() == before


async def test_master_opened_from_ptmx_is_accepted() -> None:
    fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
    try:
        with unix_pair() as (sender, receiver):
            send_fds(sender, b"/dev/ptmx", [fd])
            with trio.fail_after(TIMEOUT):
                holder, number, _ = await receive_master(receiver)
            with holder:
                assert number == ioctl_ptn(fd)
            assert holder.closed
    finally:
        os.close(fd)


# --- receive_master: rejected, everything closed ------------------------------------------------


async def test_slave_is_rejected(pty: tuple[int, int]) -> None:
    _, slave = pty
    with unix_pair() as (sender, receiver):
        send_fds(sender, b"/dev/ptmx", [slave])
        error = await expect_rejected(receiver, "pty_slave", open_fds())
    assert "slave" in str(error)
    assert is_open(slave)  # our own copy is untouched


async def test_regular_file_is_rejected(regular_file: int) -> None:
    with unix_pair() as (sender, receiver):
        send_fds(sender, b" ", [regular_file])
        error = await expect_rejected(receiver, "not_a_pty", open_fds())
    assert "a regular file" in str(error)


async def test_socket_is_rejected() -> None:
    other_a, other_b = socket.socketpair()
    with other_a, other_b, unix_pair() as (sender, receiver):
        send_fds(sender, b" ", [other_a.fileno()])
        error = await expect_rejected(receiver, "not_a_pty", open_fds())
        assert "a socket" in str(error)
        # The copy we received was closed: the peer is still connected through ours.
        other_a.send(b"x")
        assert other_b.recv(1) == b"x"


async def test_pipe_is_rejected() -> None:
    r, w = os.pipe()
    try:
        with unix_pair() as (sender, receiver):
            send_fds(sender, b" ", [r])
            error = await expect_rejected(receiver, "not_a_pty", open_fds())
        assert "a pipe" in str(error)
    finally:
        os.close(r)
        os.close(w)


async def test_other_character_device_is_rejected() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        with unix_pair() as (sender, receiver):
            send_fds(sender, b" ", [fd])
            error = await expect_rejected(receiver, "not_a_pty", open_fds())
        assert "a character device (1:3)" in str(error)
    finally:
        os.close(fd)


async def test_directory_is_rejected(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with unix_pair() as (sender, receiver):
            send_fds(sender, b" ", [fd])
            error = await expect_rejected(receiver, "not_a_pty", open_fds())
        assert "a directory" in str(error)
    finally:
        os.close(fd)


@pytest.mark.parametrize("count", [2, 3, MAX_FDS])
async def test_several_fds_are_rejected_and_all_closed(pty: tuple[int, int], count: int) -> None:
    master, slave = pty
    with unix_pair() as (sender, receiver):
        send_fds(sender, b"/dev/ptmx", [master, slave, *[master] * (count - 2)])
        error = await expect_rejected(receiver, "too_many_fds", open_fds())
    assert f"received {count}" in str(error)


@pytest.mark.parametrize("count", [MAX_FDS + 1, MAX_FDS + 10])
async def test_truncated_control_data_is_rejected_and_all_closed(
    pty: tuple[int, int], count: int
) -> None:
    master, _ = pty
    with unix_pair() as (sender, receiver):
        send_fds(sender, b"/dev/ptmx", [master] * count)
        error = await expect_rejected(receiver, "truncated", open_fds())
    # The kernel delivered MAX_FDS of them (and dropped the rest); we closed those.
    assert f"closed the {MAX_FDS} that arrived" in str(error)


async def test_payload_without_fd_is_rejected() -> None:
    with unix_pair() as (sender, receiver):
        send_fds(sender, b"/dev/ptmx", [])
        error = await expect_rejected(receiver, "no_fd", open_fds())
    assert "9 bytes" in str(error)


async def test_peer_closing_without_sending_is_rejected() -> None:
    with unix_pair() as (sender, receiver):
        sender.close()
        await expect_rejected(receiver, "closed_early", open_fds())


async def test_receive_fds_owns_every_fd(pty: tuple[int, int], regular_file: int) -> None:
    master, slave = pty
    with unix_pair() as (sender, receiver):
        send_fds(sender, b"three", [master, slave, regular_file])
        before = open_fds()
        with trio.fail_after(TIMEOUT):
            received = await receive_fds(receiver)
        assert received.payload == b"three"
        assert len(received.fds) == 3
        new = {h.fd for h in received.fds}
        assert set(open_fds()) - set(before) == new
        for holder in received.fds:
            holder.close()
        assert open_fds() == before


async def test_check_master_on_a_closed_fd(regular_file: int) -> None:
    fd = os.dup(regular_file)
    os.close(fd)
    with pytest.raises(IntakeError) as excinfo:
        check_master(fd)
    assert excinfo.value.kind == "bad_fd"


def test_pty_number_is_none_for_non_masters(pty: tuple[int, int], regular_file: int) -> None:
    master, slave = pty
    assert pty_number(master) == ioctl_ptn(master)
    assert pty_number(slave) is None
    assert pty_number(regular_file) is None


# --- OwnedFd ---------------------------------------------------------------------------------


async def test_holder_close_is_idempotent_and_forgets_the_number(regular_file: int) -> None:
    fd = os.dup(regular_file)
    holder = OwnedFd(fd)
    assert holder.fd == fd
    assert not holder.closed
    holder.close()
    assert holder.closed
    assert not is_open(fd)
    with pytest.raises(trio.ClosedResourceError):
        _ = holder.fd
    with pytest.raises(trio.ClosedResourceError):
        holder.release()
    # The number is reused by the next open; the holder must never touch it again.
    reused = os.dup(regular_file)
    try:
        assert reused == fd, "lowest free fd number is reused"
        holder.close()
        del holder
        gc.collect()
        assert is_open(reused)
    finally:
        os.close(reused)


async def test_holder_release_hands_the_fd_on(regular_file: int) -> None:
    fd = os.dup(regular_file)
    try:
        holder = OwnedFd(fd)
        assert holder.release() == fd
        assert holder.closed
        with pytest.raises(trio.ClosedResourceError):
            _ = holder.fd
        holder.close()
        del holder
        gc.collect()
        assert is_open(fd)
    finally:
        os.close(fd)


async def test_holder_context_manager_closes(regular_file: int) -> None:
    fd = os.dup(regular_file)
    with OwnedFd(fd) as holder:
        assert holder.fd == fd
        assert is_open(fd)
    assert holder.closed
    assert not is_open(fd)


async def test_unclosed_holder_closes_the_fd_and_warns(regular_file: int) -> None:
    fd = os.dup(regular_file)
    # A leak is a bug: the owner warns (and the suite turns warnings into failures),
    # but the fd itself is never leaked.
    with pytest.warns(ResourceWarning, match=f"leaked test fd {fd}"):
        OwnedFd(fd, "test")  # dropped at once, unclosed
    assert not is_open(fd)


async def test_holder_close_wakes_a_task_waiting_on_the_fd() -> None:
    r, w = os.pipe()
    holder = OwnedFd(r)
    woken: list[type[BaseException]] = []

    async def wait() -> None:
        try:
            await trio.lowlevel.wait_readable(r)
        except trio.ClosedResourceError as exc:
            woken.append(type(exc))

    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                assert woken == []
                holder.close()
        assert woken == [trio.ClosedResourceError]
    finally:
        os.close(w)


# --- Subscriber ---------------------------------------------------------------------------------


def sub(limit: int = 10) -> Subscriber:
    return Subscriber(limit, read_only=False, label="test")


async def test_push_within_limit_queues() -> None:
    s = sub(10)
    assert s.push(b"abcd")
    assert s.push(b"efghij")
    assert s.queued == 10
    assert s.end_notice is None
    assert not s.ended.is_set()
    assert s.take(100) == [b"abcd", b"efghij"]
    assert s.queued == 0
    # Taking makes room again.
    assert s.push(b"x" * 10)


async def test_push_over_limit_ends_lagged_and_clears() -> None:
    s = sub(10)
    assert s.push(b"12345678")
    assert not s.push(b"abc")
    assert s.end_notice is not None
    assert s.end_notice.reason is EndReason.LAGGED
    assert "10 bytes" in s.end_notice.message
    assert s.ended.is_set()
    assert s.queued == 0
    assert s.take(100) == []
    # Once ended, nothing more is queued, even what would fit.
    assert not s.push(b"a")
    assert s.queued == 0


async def test_preload_does_not_count_against_the_limit() -> None:
    s = sub(10)
    s.preload([b"r" * 60, b"s" * 40])
    assert s.queued == 100
    assert s.push(b"l" * 10)
    assert s.queued == 110
    assert not s.push(b"!")
    assert s.end_notice is not None
    assert s.end_notice.reason is EndReason.LAGGED


async def test_replay_taken_frees_no_extra_live_room() -> None:
    s = sub(10)
    s.preload([b"r" * 100])
    assert s.take(1000) == [b"r" * 100]
    assert s.push(b"l" * 10)
    assert not s.push(b"l")


async def test_take_respects_max_bytes() -> None:
    s = sub(100)
    for chunk in (b"aaa", b"bbb", b"ccc", b"dddddddddd"):
        assert s.push(chunk)
    assert s.take(7) == [b"aaa", b"bbb"]
    assert s.take(1) == [b"ccc"], "at least one chunk, even over max_bytes"
    assert s.take(0) == [b"dddddddddd"]
    assert s.take(100) == []
    assert s.queued == 0


async def test_end_detached_drops_the_queue_but_exited_keeps_it() -> None:
    s = sub(100)
    s.push(b"pending")
    s.end(EndReason.DETACHED)
    assert s.queued == 0
    assert s.take(100) == []
    assert s.end_notice is not None
    assert s.end_notice.reason is EndReason.DETACHED
    # A second end does not replace the first.
    s.end(EndReason.EXITED, "later")
    assert s.end_notice.reason is EndReason.DETACHED

    t = sub(100)
    t.push(b"last words")
    t.end(EndReason.EXITED, "bye")
    assert t.take(100) == [b"last words"]
    assert t.end_notice is not None
    assert t.end_notice.message == "bye"


async def test_follower_is_read_only() -> None:
    assert Subscriber(1, read_only=False, label="f", follower=True).read_only
    assert not sub().read_only


async def test_wait_output_wakes_on_push_and_on_end() -> None:
    s = sub(100)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def waiter() -> None:
                await s.wait_output()
                done.set()

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            s.push(b"x")
            await done.wait()

        # Data still queued: no wait.
        await s.wait_output()
        assert s.take(10) == [b"x"]

        # Queue drained: waiting blocks again, until the stream ends.
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            s.end(EndReason.SHUTDOWN)
            await done.wait()

        # Ended: waiting never blocks again.
        await s.wait_output()
        assert s.take(10) == []
        await s.wait_output()


async def test_wait_output_wakes_on_preload() -> None:
    s = sub(1)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.wait_output)
            await trio.testing.wait_all_tasks_blocked()
            s.preload([b"replay"])
    assert s.take(100) == [b"replay"]
