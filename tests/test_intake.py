"""Bad intake through a real daemon, sent with SCM_RIGHTS from this process.

For every way a console-socket peer can get it wrong (nothing, several fds, a
file, a socket, a pty slave, truncated control data, silence, a second
connection), the daemon must log ``intake.rejected`` with a specific
``kind``, close every fd that arrived (checked from the outside: the far end
of a pipe, socket or pty sees its peer gone, and ``/proc/PID/fd`` of the
daemon holds nothing we sent), keep the session waiting for a good master
(a real ``os.openpty()`` master with the payload runc sends), and go on
serving a real runc container's session meanwhile.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio

from consoled.io.fdpass import MAX_FDS
from consoled.protocol import events as ev
from consoled.server.intake import SEND_TIMEOUT
from tests.conftest import BundleFactory, DaemonFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.runtime import Runtime, new_container_id

#: What runc 1.1 sends with the master.
PTMX = b"/dev/ptmx"
#: Bound on any one socket operation or wait in these tests.
BOUND = 15.0
#: Bound on waiting for the daemon to give up on a silent peer.
SILENT_BOUND = SEND_TIMEOUT + 15.0


# --- fds we own --------------------------------------------------------------------------------


class Kit:
    """The fds a test opens, each closed exactly once (on request or at the end)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._fds: set[int] = set()
        self._socks: list[trio.socket.SocketType] = []
        self._files = 0

    def own(self, fd: int) -> int:
        self._fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        """Close ``fd`` if we still hold it (so a reused number is never touched)."""
        if fd in self._fds:
            self._fds.discard(fd)
            os.close(fd)

    def keep(self, sock: trio.socket.SocketType) -> trio.socket.SocketType:
        self._socks.append(sock)
        return sock

    def close_all(self) -> None:
        for fd in sorted(self._fds):
            os.close(fd)
        self._fds.clear()
        for sock in self._socks:
            sock.close()

    def pty(self) -> tuple[int, int]:
        """A fresh pty pair, both ends nonblocking."""
        master, slave = os.openpty()
        self.own(master)
        self.own(slave)
        os.set_blocking(master, False)
        os.set_blocking(slave, False)
        return master, slave

    def regular_file(self) -> tuple[int, str]:
        """An open regular file and the path the daemon's /proc/PID/fd would show for it."""
        self._files += 1
        path = self.tmp / f"not-a-terminal-{self._files}"
        path.write_bytes(b"not a terminal")
        return self.own(os.open(path, os.O_RDONLY | os.O_CLOEXEC)), os.path.realpath(path)

    def socketpair(self) -> tuple[int, int]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        b.setblocking(False)
        return self.own(a.detach()), self.own(b.detach())

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        os.set_blocking(r, False)
        return self.own(r), self.own(w)


@pytest.fixture
async def kit(tmp_path: Path) -> AsyncIterator[Kit]:
    # Async so that it is torn down inside trio, where trio sockets close.
    k = Kit(tmp_path)
    try:
        yield k
    finally:
        k.close_all()


def peer_gone(fd: int) -> bool:
    """Whether every copy of the other end of ``fd`` is closed (EOF or EIO), not just ours."""
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno == errno.EIO:  # a pty master whose slaves are all closed
            return True
        raise


def daemon_fds(pid: int) -> dict[int, str]:
    """What each fd of process ``pid`` points at."""
    links = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we looked
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


def held(pid: int, target: str) -> list[str]:
    return [f"daemon fd {n} -> {link}" for n, link in daemon_fds(pid).items() if link == target]


def inode_link(kind: str, fd: int) -> str:
    """How /proc/PID/fd shows a socket or pipe: ``socket:[INODE]``."""
    return f"{kind}:[{os.fstat(fd).st_ino}]"


async def wait_until(check: Callable[[], list[str]], timeout: float = BOUND) -> None:
    """Poll ``check`` until it reports no problem (for facts no event announces)."""
    problems = check()
    with trio.move_on_after(timeout):
        while problems:
            await trio.sleep(0.05)
            problems = check()
        return
    raise AssertionError(f"still after {timeout} s: {problems}")


# --- talking to a console socket like a runtime -------------------------------------------------


async def connect(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with trio.fail_after(BOUND):
            await sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


async def send_on(sock: trio.socket.SocketType, payload: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    with trio.fail_after(BOUND):
        await sock.sendmsg([payload], ancillary)


async def send_fds(path: str, payload: bytes, fds: list[int]) -> None:
    """Connect, send one message with ``fds``, hang up: what a runtime does."""
    with await connect(path) as sock:
        await send_on(sock, payload, fds)


# --- the bad cases -----------------------------------------------------------------------------


#: Given the daemon's pid, what it (or anyone) still holds of what a case
#: sent; empty when everything was closed.
Leftovers = Callable[[int], list[str]]


def nothing_sent(pid: int) -> list[str]:
    return []


@dataclass(frozen=True)
class Case:
    """A bad intake: how to send it, and what the daemon must log for it.

    Attributes:
        kind: the ``kind`` of the ``intake.rejected`` event.
        error: a piece of its ``error``.
        send: sends to a console socket path; returns the leftovers check.
        timeout: how long the rejection may take.
    """

    kind: str
    error: str
    send: Callable[[str, Kit], Awaitable[Leftovers]]
    timeout: float = BOUND

    def __str__(self) -> str:
        return self.send.__name__.removeprefix("send_")


async def send_closed_early(path: str, kit: Kit) -> Leftovers:
    (await connect(path)).close()
    return nothing_sent


async def send_no_fd(path: str, kit: Kit) -> Leftovers:
    await send_fds(path, PTMX, [])
    return nothing_sent


async def send_several_fds(path: str, kit: Kit) -> Leftovers:
    # A good master in bad company is refused too, and closed with the rest.
    master, slave = kit.pty()
    fd, target = kit.regular_file()
    await send_fds(path, PTMX, [master, fd])

    def leftovers(pid: int) -> list[str]:
        kit.close(master)
        return held(pid, target) + ([] if peer_gone(slave) else ["the pty master is open"])

    return leftovers


async def send_regular_file(path: str, kit: Kit) -> Leftovers:
    fd, target = kit.regular_file()
    await send_fds(path, PTMX, [fd])
    return lambda pid: held(pid, target)


async def send_socket(path: str, kit: Kit) -> Leftovers:
    sent, other_end = kit.socketpair()
    target = inode_link("socket", sent)
    await send_fds(path, PTMX, [sent])

    def leftovers(pid: int) -> list[str]:
        kit.close(sent)
        return held(pid, target) + ([] if peer_gone(other_end) else ["the socket is open"])

    return leftovers


async def send_pty_slave(path: str, kit: Kit) -> Leftovers:
    master, slave = kit.pty()
    target = os.ttyname(slave)
    await send_fds(path, PTMX, [slave])

    def leftovers(pid: int) -> list[str]:
        kit.close(slave)
        return held(pid, target) + ([] if peer_gone(master) else ["the pty slave is open"])

    return leftovers


async def send_truncated(path: str, kit: Kit) -> Leftovers:
    # 64 copies of a pipe's write end: more than the daemon's control buffer
    # holds, so the kernel sets MSG_CTRUNC and drops the rest.  Once our
    # copies are closed the read end sees EOF only if every copy the daemon
    # got, and every one the kernel dropped, is closed.
    r, w = kit.pipe()
    target = inode_link("pipe", w)
    copies = [w, *(kit.own(os.dup(w)) for _ in range(63))]
    await send_fds(path, PTMX, copies)

    def leftovers(pid: int) -> list[str]:
        for fd in copies:
            kit.close(fd)
        return held(pid, target) + ([] if peer_gone(r) else ["a write end of the pipe is open"])

    return leftovers


async def send_silence(path: str, kit: Kit) -> Leftovers:
    sock = kit.keep(await connect(path))
    return lambda pid: [] if peer_gone(sock.fileno()) else ["the daemon holds the connection"]


CLOSED_EARLY = Case("closed_early", "closed the connection without sending", send_closed_early)
NO_FD = Case("no_fd", f"sent {len(PTMX)} bytes of payload but no file descriptor", send_no_fd)
SEVERAL_FDS = Case("too_many_fds", "expected exactly one fd, received 2", send_several_fds)
REGULAR_FILE = Case("not_a_pty", "received a regular file", send_regular_file)
SOCKET = Case("not_a_pty", "received a socket", send_socket)
PTY_SLAVE = Case("pty_slave", "received a pty slave", send_pty_slave)
TRUNCATED = Case("truncated", f"closed the {MAX_FDS} that arrived", send_truncated)
SILENT = Case("silent", "sent nothing within", send_silence, timeout=SILENT_BOUND)
CASES = [CLOSED_EARLY, NO_FD, SEVERAL_FDS, REGULAR_FILE, SOCKET, PTY_SLAVE, TRUNCATED, SILENT]


async def reject(daemon: DaemonProcess, path: str, case: Case, kit: Kit, **match: object) -> None:
    """Send ``case`` to ``path``; check the rejection is logged and everything closed."""
    before = len(daemon.find("intake.rejected", kind=case.kind, **match))
    leftovers = await case.send(path, kit)
    event = await daemon.wait_event(
        "intake.rejected", timeout=case.timeout, count=before + 1, kind=case.kind, **match
    )
    assert case.error in event["error"], event
    # The daemon closes before it logs; the poll only covers the kernel's own
    # deferred release of fds that were still in flight.
    await wait_until(lambda: leftovers(daemon.pid))


# --- sessions ----------------------------------------------------------------------------------


@pytest.fixture
async def other(
    daemon: DaemonProcess, client: AsyncClient, runc: Runtime, bundle: BundleFactory
) -> str:
    """A session with a real runc container on it that answers ``pong-X`` to each line ``X``."""
    cid = new_container_id("other")
    path = await client.create_socket(cid)
    b = bundle(["sh", "-c", "echo other-up; while read x; do echo pong-$x; done"])
    await runc.run(cid, b, path)
    await daemon.wait_event("session.running", session=cid)
    return cid


async def ping(daemon: DaemonProcess, name: str, word: str) -> None:
    """The daemon still serves ``name``: an attached client's input gets an answer, also logged."""
    attach = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await attach.request(ev.Attach(name, replay=0))
        assert isinstance(reply, ev.Attached), reply
        await attach.send(ev.Input(f"{word}\r".encode()))
        out, ended = await attach.read_output_until(f"pong-{word}".encode())
        assert ended is None, ended
        assert f"pong-{word}".encode() in out
    finally:
        await attach.aclose()
    result = await cli(daemon, "logs", name)
    assert result.returncode == 0, result.stderr
    assert f"pong-{word}".encode() in result.stdout


async def assert_waiting(client: AsyncClient, name: str, path: str) -> None:
    info = await client.session(name)
    assert info.state is ev.SessionState.WAITING, info
    assert info.socket == path
    assert stat.S_ISSOCK(os.stat(path).st_mode)


async def assert_gone(client: AsyncClient, name: str, path: str) -> None:
    assert name not in [s.session for s in await client.list_sessions()]
    assert not os.path.exists(path)


async def give_good_master(
    daemon: DaemonProcess, client: AsyncClient, kit: Kit, name: str, path: str
) -> None:
    """A runtime's master makes the session run; its socket goes; then let it end."""
    master, slave = kit.pty()
    await send_fds(path, PTMX, [master])
    got = await daemon.wait_event("intake.master", session=name)
    assert got["pty"] == int(os.ttyname(slave).rsplit("/", 1)[1])
    await daemon.wait_event("session.running", session=name)
    kit.close(master)  # the daemon's copy is the only one now
    info = await client.session(name)
    assert info.state is ev.SessionState.RUNNING
    assert info.socket is None
    # A second connection after the master finds no socket to talk to.
    assert not os.path.exists(path)
    with pytest.raises(FileNotFoundError):
        await connect(path)
    # The daemon reads the master it took.
    os.write(slave, b"good-master-held\n")
    attach = await AsyncClient.connect(daemon.control_socket)
    try:
        reply = await attach.request(ev.Attach(name, replay=None))
        assert isinstance(reply, ev.Attached), reply
        out, _ = await attach.read_output_until(b"good-master-held")
        assert b"good-master-held" in out
    finally:
        await attach.aclose()
    kit.close(slave)
    await daemon.wait_event("session.exited", session=name)


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_bad_intake_is_rejected_and_the_session_keeps_waiting(
    case: Case, daemon: DaemonProcess, client: AsyncClient, other: str, kit: Kit
) -> None:
    name = new_container_id("victim")
    path = await client.create_socket(name)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(reject, daemon, path, case, kit, session=name))
        # The other session is served while the bad peer is dealt with...
        await ping(daemon, other, "meanwhile")
    # ...and after.
    await ping(daemon, other, "after")
    await assert_waiting(client, name, path)
    await give_good_master(daemon, client, kit, name, path)
    assert len(daemon.find("intake.rejected", session=name)) == 1
    await ping(daemon, other, "end")


async def test_every_bad_intake_in_a_row_then_a_good_master(
    daemon: DaemonProcess, client: AsyncClient, kit: Kit
) -> None:
    """One socket survives all the bad cases, a silent peer blocking none of them."""
    name = new_container_id("many")
    path = await client.create_socket(name)
    quiet = kit.keep(await connect(path))
    for case in CASES:
        if case is not SILENT:
            await reject(daemon, path, case, kit, session=name)
            await assert_waiting(client, name, path)
    await give_good_master(daemon, client, kit, name, path)
    # The silent peer, still connected, is let go when the master arrives.
    with trio.fail_after(BOUND):
        assert await quiet.recv(16) == b""
    await daemon.wait_event("intake.rejected", kind="second_connection", session=name)
    kinds = sorted(e["kind"] for e in daemon.find("intake.rejected", session=name))
    assert kinds == sorted([c.kind for c in CASES if c is not SILENT] + ["second_connection"])


async def test_connection_open_when_the_master_arrives_is_rejected(
    daemon: DaemonProcess, client: AsyncClient, kit: Kit
) -> None:
    name = new_container_id("second")
    path = await client.create_socket(name)
    pending = kit.keep(await connect(path))
    # Connections are accepted in order: once a later one is rejected, the
    # pending one is being served too.
    await reject(daemon, path, CLOSED_EARLY, kit, session=name)
    master, slave = kit.pty()
    await send_fds(path, PTMX, [master])
    await daemon.wait_event("intake.master", session=name)
    event = await daemon.wait_event("intake.rejected", session=name, kind="second_connection")
    assert "another connection first" in event["error"]
    with trio.fail_after(BOUND):
        assert await pending.recv(16) == b""
    await daemon.wait_event("session.running", session=name)
    assert not os.path.exists(path)
    with pytest.raises(FileNotFoundError):
        await connect(path)
    kit.close(master)
    kit.close(slave)
    await daemon.wait_event("session.exited", session=name)


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def test_two_masters_at_once_one_is_held_the_other_closed(
    daemon: DaemonProcess, client: AsyncClient, kit: Kit
) -> None:
    name = new_container_id("race")
    path = await client.create_socket(name)
    (m1, s1), (m2, s2) = kit.pty(), kit.pty()
    numbers = {s: int(os.ttyname(s).rsplit("/", 1)[1]) for s in (s1, s2)}
    # Both runtimes connect and send while the daemon is stopped, so it finds
    # both waiting when it wakes up.
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        await wait_until(lambda: [] if process_state(daemon.pid) == "T" else ["not stopped"])
        with await connect(path) as a, await connect(path) as b:
            await send_on(a, PTMX, [m1])
            await send_on(b, PTMX, [m2])
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    got = await daemon.wait_event("intake.master", session=name)
    event = await daemon.wait_event("intake.rejected", session=name)
    # Which of the two the daemon had read when the other won is up to its
    # scheduler; either way the loser is logged and its master closed.
    assert event["kind"] in ("second_master", "second_connection"), event
    await daemon.wait_event("session.running", session=name)
    kit.close(m1)
    kit.close(m2)
    (held_slave,) = [s for s, n in numbers.items() if n == got["pty"]]
    (lost_slave,) = [s for s in numbers if s != held_slave]
    await wait_until(lambda: [] if peer_gone(lost_slave) else ["the losing master is open"])
    assert not peer_gone(held_slave)
    assert (await client.session(name)).state is ev.SessionState.RUNNING
    await daemon.wait_event("intake.master", session=name)
    assert len(daemon.find("intake.master", session=name)) == 1
    kit.close(s1)
    kit.close(s2)
    await daemon.wait_event("session.exited", session=name)


async def test_intake_timeout_drops_the_waiting_session(
    daemon_factory: DaemonFactory, kit: Kit
) -> None:
    daemon = await daemon_factory("--intake-timeout", "5")
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        name = new_container_id("late")
        path = await client.create_socket(name)
        await reject(daemon, path, NO_FD, kit, session=name)
        await assert_waiting(client, name, path)
        # A peer still connected (and silent) when the time is up does not
        # keep the session alive, and is not blamed for the master's absence.
        pending = kit.keep(await connect(path))
        gave_up = await daemon.wait_event("intake.gave_up", session=name, timeout=BOUND + 5)
        assert "no master arrived within 5 s" in gave_up["reason"]
        with trio.fail_after(BOUND):
            assert await pending.recv(16) == b""
        await assert_gone(client, name, path)
        with pytest.raises(FileNotFoundError):
            await connect(path)
        assert [e["kind"] for e in daemon.find("intake.rejected", session=name)] == ["no_fd"]
        # The name is free again, and the daemon takes a master for it.
        path = await client.create_socket(name)
        await give_good_master(daemon, client, kit, name, path)
    finally:
        await client.aclose()


@pytest.mark.parametrize("how", ["unlinked", "replaced"])
async def test_removing_the_socket_file_ends_the_waiting_session(
    how: str, daemon: DaemonProcess, client: AsyncClient, kit: Kit, tmp_path: Path
) -> None:
    name = new_container_id("unlinked")
    path = await client.create_socket(name)
    await reject(daemon, path, REGULAR_FILE, kit, session=name)
    if how == "unlinked":
        os.unlink(path)
    else:
        stand_in = tmp_path / "stand-in"
        stand_in.write_text("someone else's file")
        os.rename(stand_in, path)
    await daemon.wait_event("intake.socket_removed", session=name)
    gave_up = await daemon.wait_event("intake.gave_up", session=name)
    assert "socket file was removed" in gave_up["reason"]
    assert name not in [s.session for s in await client.list_sessions()]
    if how == "replaced":
        # The daemon removes only its own socket, never what took its place.
        assert Path(path).read_text() == "someone else's file"
        os.unlink(path)
    # The name is free again.
    path = await client.create_socket(name)
    await give_good_master(daemon, client, kit, name, path)


async def test_bad_intake_on_the_well_known_socket(
    daemon: DaemonProcess,
    client: AsyncClient,
    kit: Kit,
    runc: Runtime,
    bundle: BundleFactory,
) -> None:
    path = daemon.console_socket
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reject, daemon, path, SILENT, kit)
        for case in CASES:
            if case is not SILENT:
                await reject(daemon, path, case, kit, peer_pid=os.getpid())
                assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert not daemon.find("intake.named")
    assert await client.list_sessions() == []
    # The socket still takes a real runtime's master, named after its container.
    cid = new_container_id("wk")
    b = bundle(["sh", "-c", "echo other-up; while read x; do echo pong-$x; done"])
    await runc.run(cid, b, path)
    await daemon.wait_event("intake.named", session=cid)
    await daemon.wait_event("session.running", session=cid)
    await ping(daemon, cid, "wk")
    assert os.path.exists(path)
