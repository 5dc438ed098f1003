"""The daemon in-process under trio's autojump clock: timeouts, limits, small faults.

Every limit refuses only what goes past it, with an error that names it,
and the connection (or the daemon) goes on.  Timeouts of minutes pass at
once on the autojump clock.  See tests/support/inproc.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import tty
from collections import Counter
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from consoled import __version__
from consoled.client.conn import Client
from consoled.io.process import terminal_leader
from consoled.protocol import PROTOCOL_VERSION, Connection, ErrorCode, Role
from consoled.protocol import events as ev
from consoled.server.config import Limits
from consoled.server.inventory import restore
from consoled.server.session import LEADER_SEARCH, Session
from consoled.server.streams import LAGGED_GRACE
from tests.support.client import AsyncClient, wait_output
from tests.support.inproc import InProcDaemon, hand_master, inproc_daemon


async def connect(d: InProcDaemon) -> AsyncClient:
    return await d.connect()


async def waiting(d: InProcDaemon, name: str) -> str:
    c = await connect(d)
    try:
        return await c.create_socket(name)
    finally:
        await c.aclose()


async def running(d: InProcDaemon, name: str, slaves: list[int]) -> int:
    """A running session ``name``; returns its slave."""
    path = await waiting(d, name)
    _, slave = hand_master(path)
    slaves.append(slave)
    session = d.table.get(name)
    with trio.fail_after(10):
        await session.running.wait()
    return slave


async def test_no_hello_in_time_closes_the_connection(
    short_tmp: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with inproc_daemon(short_tmp / "s") as d:
        c = await d.connect(hello=False)
        start = trio.current_time()
        reply = await c.receive(timeout=60)
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.UNEXPECTED_MESSAGE
        assert reply.message == "no hello within 10 s"
        assert trio.current_time() - start == pytest.approx(10, abs=0.1)
        assert await c.receive() is None
        await c.aclose()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
    short_tmp: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Was: 1,000 idle connections after hello stayed open forever.
    async with inproc_daemon(short_tmp / "s", limits=Limits(idle_timeout=600)) as d:
        c = await connect(d)
        start = trio.current_time()
        reply = await c.receive(timeout=3600)
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.IDLE_TIMEOUT
        assert "no request within 600 s" in reply.message
        assert trio.current_time() - start == pytest.approx(600, abs=0.1)
        # A busy connection is not idle: each request starts the clock again.
        busy = await connect(d)
        for _ in range(5):
            await trio.sleep(500)
            assert isinstance(await busy.request(ev.GetInfo()), ev.DaemonInfo)
        await busy.aclose()
        await c.aclose()


async def test_connections_past_the_limit_are_refused_and_the_rest_served(
    short_tmp: Path,
) -> None:
    async with inproc_daemon(short_tmp / "s", limits=Limits(connections=3)) as d:
        kept = [await connect(d) for _ in range(3)]
        extra = await d.connect(hello=False)
        reply = await extra.receive()
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.TOO_MANY_CONNECTIONS
        assert "3 connections" in reply.message
        await extra.aclose()
        for c in kept:
            assert isinstance(await c.request(ev.GetInfo()), ev.DaemonInfo)
        await kept.pop().aclose()
        await trio.testing.wait_all_tasks_blocked()  # the daemon has seen it go
        again = await connect(d)
        assert isinstance(await again.request(ev.GetInfo()), ev.DaemonInfo)
        for c in (*kept, again):
            await c.aclose()


async def test_waiting_and_session_limits_refuse_only_the_request(
    short_tmp: Path, slaves: list[int]
) -> None:
    limits = Limits(waiting=2, sessions=3)
    async with inproc_daemon(short_tmp / "s", limits=limits) as d:
        c = await connect(d)
        await c.create_socket("w1")
        await c.create_socket("w2")
        reply = await c.request(ev.CreateSocket("w3"))
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.LIMIT_EXCEEDED
        assert "--max-waiting" in reply.message
        # A waiting session that gets its master makes room.
        _, slave = hand_master(d.table.get("w1").socket_path or "")
        slaves.append(slave)
        with trio.fail_after(10):
            await d.table.get("w1").running.wait()
        await c.create_socket("w3")
        _, slave = hand_master(d.table.get("w2").socket_path or "")
        slaves.append(slave)
        with trio.fail_after(10):
            await d.table.get("w2").running.wait()
        reply = await c.request(ev.CreateSocket("w4"))
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.LIMIT_EXCEEDED
        assert "--max-sessions" in reply.message
        # The same connection goes on.
        assert len(await c.list_sessions()) == 3
        await c.aclose()


async def test_clients_per_session_limit(short_tmp: Path, slaves: list[int]) -> None:
    async with inproc_daemon(short_tmp / "s", limits=Limits(clients_per_session=2)) as d:
        await running(d, "c1", slaves)
        a, b, c = [await connect(d) for _ in range(3)]
        assert isinstance(await a.request(ev.Attach("c1")), ev.Attached)
        assert isinstance(await b.request(ev.Logs("c1", follow=True)), ev.Attached)
        reply = await c.request(ev.Attach("c1"))
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.LIMIT_EXCEEDED
        assert "2 clients" in reply.message
        # Refused, not closed: the client can do something else.
        assert isinstance(await c.request(ev.GetInfo()), ev.DaemonInfo)
        for x in (a, b, c):
            await x.aclose()


async def test_unfinished_frames_are_bounded_for_all_clients_together(
    short_tmp: Path,
) -> None:
    # Was: 300 connections each holding an unfinished frame of about 1 MiB
    # pushed the daemon's RSS to 349 MiB.
    async with inproc_daemon(short_tmp / "s", limits=Limits(buffered=256 * 1024)) as d:
        header = (1024 * 1024).to_bytes(4, "big")  # a 1 MiB frame, never finished
        first = await d.connect(hello=False)
        await first.send_raw(header + b"\x00" * (200 * 1024))
        await trio.testing.wait_all_tasks_blocked()  # the daemon holds all of it now
        second = await d.connect(hello=False)
        await second.send_raw(header + b"\x00" * (100 * 1024))
        reply = await second.receive()
        assert isinstance(reply, ev.Error), reply
        assert reply.code is ErrorCode.BUFFER_LIMIT
        assert str(256 * 1024) in reply.message
        await second.aclose()
        # The first one's bytes are still held; once it goes, room again.
        await first.aclose()
        third = await d.connect(hello=False)
        await third.send_raw(header + b"\x00" * (200 * 1024))
        fine = await connect(d)
        assert isinstance(await fine.request(ev.GetInfo()), ev.DaemonInfo)
        await fine.aclose()
        await third.aclose()


async def test_a_pipelined_request_is_not_charged_to_the_buffer_budget(
    short_tmp: Path,
) -> None:
    # Was: the request waiting behind its hello counted as unfinished, so a
    # nearly full budget refused every `consoled` command.
    limit = 256 * 1024
    async with inproc_daemon(short_tmp / "s", limits=Limits(buffered=limit)) as d:
        holder = await d.connect(hello=False)
        await holder.send_raw((1024 * 1024).to_bytes(4, "big") + b"\x00" * (limit - 8))
        await trio.testing.wait_all_tasks_blocked()  # the daemon holds limit - 4 bytes
        c = await d.connect(hello=False)
        await c.send_raw(c.conn.send(ev.Hello(PROTOCOL_VERSION)) + c.conn.send(ev.GetInfo()))
        assert isinstance(await c.receive(), ev.Welcome)
        assert isinstance(await c.receive(), ev.DaemonInfo)
        await c.aclose()
        await holder.aclose()


async def test_a_waiting_session_gives_up_after_the_intake_timeout(
    short_tmp: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with inproc_daemon(short_tmp / "s", intake_timeout=300) as d:
        path = await waiting(d, "late")
        session = d.table.get("late")
        start = trio.current_time()
        with structlog.testing.capture_logs() as logs:
            with trio.fail_after(400):
                await session.done.wait()
        assert trio.current_time() - start == pytest.approx(300, abs=1)
        (gave_up,) = [e for e in logs if e["event"] == "intake.gave_up"]
        assert gave_up["reason"] == "no master arrived within 300 s"
        assert [s.name for s in d.table] == []
        assert not os.path.exists(path)


async def test_input_before_the_master_arrives_waits_for_it(
    short_tmp: Path, slaves: list[int]
) -> None:
    # Was: input sent while a session was still waiting was counted as
    # written and silently thrown away.
    async with inproc_daemon(short_tmp / "s") as d:
        path = await waiting(d, "early")
        c = await connect(d)
        assert isinstance(await c.request(ev.Attach("early")), ev.Attached)
        await c.send(ev.Input(b"typed-before-the-master\n"))
        await trio.testing.wait_all_tasks_blocked()
        _, slave = hand_master(path)
        slaves.append(slave)
        got = b""
        with trio.fail_after(10):
            while b"typed-before-the-master\n" not in got:
                await trio.lowlevel.wait_readable(slave)
                got += os.read(slave, 4096)
        await c.aclose()


async def test_a_lagged_client_that_reads_nothing_is_let_go_after_the_grace(
    short_tmp: Path, slaves: list[int], autojump_clock: trio.testing.MockClock
) -> None:
    """Its stream ends LAGGED_GRACE after it lagged, though the ``ended`` notice
    cannot be written: the socket is full and the client never reads."""
    async with inproc_daemon(short_tmp / "s", client_queue=64 * 1024) as d:
        slave = await running(d, "flood", slaves)
        os.set_blocking(slave, False)
        c = await connect(d)
        assert isinstance(await c.request(ev.Attach("flood", replay=0)), ev.Attached)
        (sub,) = list(d.table.get("flood").hub)
        with structlog.testing.capture_logs() as logs:
            with trio.fail_after(60):
                while sub.end_notice is None:
                    try:
                        os.write(slave, b"x" * 4096)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(slave)
                lagged_at = trio.current_time()
                await d.table.wait_streams_done()
        assert sub.end_notice.reason is ev.EndReason.LAGGED
        assert trio.current_time() - lagged_at == pytest.approx(LAGGED_GRACE, abs=0.5)
        (detached,) = [e for e in logs if e["event"] == "client.detached"]
        assert detached["reason"] == "lagged"
        await c.aclose()


async def test_a_restart_counts_input_exactly_as_far_as_it_reached_the_terminal(
    short_tmp: Path, slaves: list[int]
) -> None:
    """``ended.input`` counts every part of a write cut short by the restart.

    The client sends again whatever lies beyond it; a count short of what
    reached the terminal makes those keys arrive twice.
    """
    # Was: a queued chunk counted only once written whole, so keys written
    # before the restart cut the write short were sent again.
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "rs", slaves)
        tty.setraw(slave)  # nobody reads it: the kernel's input buffer fills
        os.set_blocking(slave, False)
        c = await connect(d)
        assert isinstance(await c.request(ev.Attach("rs", replay=0)), ev.Attached)
        typed = b"".join(b"%05d," % i for i in range(8000))  # 48 KB: the pty takes about 20
        await c.send(ev.Input(typed))
        await trio.testing.wait_all_tasks_blocked()
        got = os.read(slave, 5000)  # room for part of the queued write, not all of it
        await trio.testing.wait_all_tasks_blocked()
        d.table.end_streams(ev.EndReason.RESTARTING, "restarting")
        ended = await c.receive()
        assert isinstance(ended, ev.Ended) and ended.reason is ev.EndReason.RESTARTING, ended
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(slave, 65536):
                got += chunk
        assert len(got) < len(typed), "the restart came while input was queued"
        assert ended.input == len(got)
        assert got == typed[: len(got)]


async def test_a_leader_gone_before_the_successor_adopts_still_gives_its_status(
    short_tmp: Path, slaves: list[int]
) -> None:
    """A successor gets each terminal's leader as a pidfd.  A leader that exits
    during the handover leaves a terminal that names nobody (``TIOCGSID``):
    the pidfd is the only way to how it ended."""
    # Was: the successor looked for the leader again, found none, and the
    # session's exit code stayed unknown.  (And a reaped process's status was
    # read from the wrong field of the kernel's pidfd_info: its fsgid.)
    async with inproc_daemon(short_tmp / "a") as old:
        slave = await running(old, "led", slaves)
        session = old.table.get("led")
        assert session.master is not None
        leader = await trio.lowlevel.open_process(  # a session leader with the terminal its own
            ["sh", "-c", f"exec sleep 60 <{os.ttyname(slave)}"], start_new_session=True
        )
        try:
            for _ in range(500):
                if terminal_leader(session.master.fd) == leader.pid:
                    break
                await trio.sleep(0.01)
            assert session.find_leader() and session.leader is not None
            named = [(name, owner.dup()) for name, owner in session.fds()]
            assert f"s{session.serial}.pid" in dict(named)
        finally:
            leader.kill()
            await leader.wait()  # reaped: nothing but its pidfd knows how it ended
        async with inproc_daemon(short_tmp / "b") as new:
            restore(named, new.table, None).close()
            adopted = new.table.get("led")
            assert adopted.master is not None and terminal_leader(adopted.master.fd) is None
            assert adopted.leader is not None
            status = await adopted.leader.wait_status(5)
            assert status is not None and os.WIFSIGNALED(status)
            assert os.WTERMSIG(status) == signal.SIGKILL


async def test_a_query_cut_in_two_by_a_restart_is_answered_by_the_successor(
    short_tmp: Path, slaves: list[int]
) -> None:
    # Was: the successor's query scanner started empty, so the end of a query
    # whose start its predecessor had read was plain output, and the program
    # waited for its answer for ever (busybox's shell asks at every prompt).
    async with inproc_daemon(short_tmp / "a") as old:
        slave = await running(old, "q", slaves)
        tty.setraw(slave)
        session = old.table.get("q")
        os.write(slave, b"prompt\x1b[6")
        await wait_output(old.control_socket, "q", b"prompt\x1b[6", timeout=10)
        old.table.freeze()  # as a handover does: its reader reads no more
        named = [(name, owner.dup()) for name, owner in session.fds()]
        async with inproc_daemon(short_tmp / "b") as new, trio.open_nursery() as pumps:
            restore(named, new.table, None).close()
            adopted = new.table.get("q")
            pumps.start_soon(adopted.pump)  # what serving a handover's sessions starts
            os.write(slave, b"n")
            answer = b""
            with trio.fail_after(10):
                while not answer.endswith(b"R"):
                    await trio.lowlevel.wait_readable(slave)
                    answer += os.read(slave, 100)
            assert answer == b"\x1b[1;7R"  # the cursor after "prompt"
            assert adopted.record.end == 10
            pumps.cancel_scope.cancel()
        old.table.thaw()


async def test_a_request_pipelined_with_hello_is_answered_after_the_welcome(
    short_tmp: Path, slaves: list[int]
) -> None:
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "piped", slaves)
        c = await d.connect(hello=False)
        hello = c.conn.send(ev.Hello(PROTOCOL_VERSION, "tests"))
        await c.send_raw(hello + c.conn.send(ev.Attach("piped", replay=0)))
        assert isinstance(await c.receive(), ev.Welcome)
        attached = await c.receive()
        assert isinstance(attached, ev.Attached), attached
        os.write(slave, b"live\n")
        got, ended = await c.read_output_until(b"live")
        assert b"live" in got and ended is None
        await c.aclose()


async def test_the_blocking_client_sends_hello_with_its_first_request(
    short_tmp: Path,
) -> None:
    """One write carries both; the welcome is read before the reply."""
    path = os.fspath(short_tmp / "fake.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    with listener:

        def call() -> ev.Event:
            with Client(path, timeout=10) as client:
                return client.request(ev.GetInfo())

        async def serve() -> bytes:
            conn, _ = await listener.accept()
            with conn:
                server = Connection(Role.SERVER)
                first = await conn.recv(65536)
                server.receive_data(first)
                got = list(server.events())
                assert [type(e) for e in got] == [ev.Hello, ev.GetInfo], got
                await conn.send(server.send(ev.Welcome(PROTOCOL_VERSION, "fake", 4242)))
                info = ev.DaemonInfo("fake", 4242, "", "", "", None, 0, "latest", 0)
                await conn.send(server.send(info))
                return first

        replies: list[ev.Event] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, lambda: replies.append(call()))
                first = await serve()
        assert isinstance(replies[0], ev.DaemonInfo)
        expected = Connection(Role.CLIENT)
        hello = ev.Hello(PROTOCOL_VERSION, f"consoled-cli/{__version__}")
        assert first == expected.send(hello) + expected.send(ev.GetInfo())


async def test_exited_sessions_are_kept_by_age_across_renames_and_listed_by_id(
    short_tmp: Path, slaves: list[int]
) -> None:
    """The retention limit and ``ls ID`` follow renames (they no longer scan every session)."""
    async with inproc_daemon(short_tmp / "s", max_exited=2) as d:

        async def run_and_exit(name: str) -> None:
            slave = await running(d, name, slaves)
            slaves.remove(slave)
            os.close(slave)  # the terminal hangs up
            with trio.fail_after(10):
                await d.table.get(name).done.wait()

        c = await connect(d)
        await run_and_exit("a")
        await run_and_exit("b")
        assert isinstance(await c.request(ev.Rename("a", "a2")), ev.Renamed)
        await run_and_exit("c")  # the oldest (a, now a2) goes, renamed or not
        assert sorted(s.session for s in await c.list_sessions()) == ["b", "c"]
        keep = await running(d, "b/sh-1", slaves)  # an exec beside exited "b"
        assert keep
        assert sorted(s.session for s in await c.list_sessions("b")) == ["b", "b/sh-1"]
        assert isinstance(await c.request(ev.Rename("b", "d")), ev.Renamed)
        assert await c.list_sessions("b") == []
        assert sorted(s.session for s in await c.list_sessions("d")) == ["d", "d/sh-1"]
        await c.aclose()


async def test_the_longest_names_get_log_files_and_rename_them(
    short_tmp: Path, tmp_path: Path, slaves: list[int]
) -> None:
    # Was: a valid name of two 128-character parts failed with `internal` when
    # --log-dir was set (the file name was too long), and renaming to such a
    # name succeeded without renaming the log.
    log_dir = tmp_path / "logs"
    long = "a" * 128 + "/" + "b" * 128
    async with inproc_daemon(short_tmp / "s", log_dir=log_dir) as d:
        slave = await running(d, long, slaves)
        session = d.table.get(long)
        follower = await connect(d)
        assert isinstance(await follower.request(ev.Logs(long, follow=True)), ev.Attached)
        os.write(slave, b"written-under-a-long-name\n")
        out, ended = await follower.read_output_until(b"long-name\r\n")
        assert ended is None, out
        await follower.aclose()
        assert session.log_file is not None
        await session.log_file.wait_idle()
        path, sidecar = sorted(log_dir.iterdir())  # the raw file, and its times
        assert sidecar.name == path.name + ".idx"
        assert len(sidecar.name) <= 255 and "~" in path.name
        assert path.read_bytes() == b"written-under-a-long-name\r\n"
        c = await connect(d)
        # The container is renamed, and its exec with it (an exec stays in its container).
        reply = await c.request(ev.Rename("a" * 128, "c" * 128))
        assert session.name.exec == "b" * 128
        assert isinstance(reply, ev.Renamed), reply
        await c.aclose()
        renamed, renamed_sidecar = sorted(log_dir.iterdir())
        assert renamed.name != path.name and renamed.name.startswith("c" * 100)
        assert renamed_sidecar.name == renamed.name + ".idx"
        assert session.info().log_path == str(renamed)


async def test_a_terminal_nobody_makes_controlling_is_looked_at_a_dozen_times(
    short_tmp: Path,
    autojump_clock: trio.testing.MockClock,
    slaves: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Was: every 5 ms for 2 s, 400 looks per session; a thousand such sessions
    # after a reexec (a pty holder's, or programs that never take a controlling
    # terminal) kept half the event loop busy, and an attached client's pause
    # grew with them.  Now the interval doubles after each miss.
    looks: Counter[str] = Counter()
    real = Session.find_leader

    def counting(self: Session) -> bool:
        looks[str(self.name)] += 1
        return real(self)

    monkeypatch.setattr(Session, "find_leader", counting)
    async with inproc_daemon(short_tmp / "s") as d:
        await running(d, "lonely", slaves)
        assert d.table.get("lonely").leader is None
        await trio.sleep(LEADER_SEARCH + 1)
        seen = looks["lonely"]
        assert 5 <= seen <= 15, seen
        await trio.sleep(60)
        assert looks["lonely"] == seen  # given up after LEADER_SEARCH


async def test_a_filtered_logs_stream_resumed_inside_a_line_it_left_out_leaves_out_the_rest(
    short_tmp: Path, slaves: list[int]
) -> None:
    """`logs --since` cut in the middle of a line older than the bound goes
    on, from that offset, without the rest of that line."""
    # Was: the rest of the line was shown (a resume assumed the line was kept).
    async with inproc_daemon(short_tmp / "s") as d:
        slave = await running(d, "f", slaves)
        tty.setraw(slave)
        session = d.table.get("f")
        os.write(slave, b"old line, first half")
        await wait_output(d.control_socket, "f", b"first half")
        await trio.sleep(0.05)  # the time index has 10 ms steps: a later time for what follows
        since = time.time_ns()
        await trio.sleep(0.05)
        os.write(slave, b", second half\nnew line\n")
        await wait_output(d.control_socket, "f", b"new line\n")
        for resume, shown in ((10, b"new line\n"), (0, b"new line\n"), (38, b"line\n")):
            c = await connect(d)
            request = ev.Logs("f", since=since, resume=resume, uid=session.uid)
            assert isinstance(await c.request(request), ev.Attached)
            got = b""
            while not isinstance(event := await c.receive(), ev.Ended):
                assert isinstance(event, ev.Output)
                got += event.data
            assert got == shown, resume


async def test_input_handed_on_to_a_session_that_then_ends_holds_up_nothing(
    short_tmp: Path, slaves: list[int]
) -> None:
    """Input handed on by a client a restart cut off waits for the terminal;
    the session ends before it is written: new input is refused at once (the
    session is gone), not held behind it for ever."""
    async with inproc_daemon(short_tmp / "s") as d:
        await running(d, "h", slaves)
        session = d.table.get("h")
        session.hand_on_input(b"keys nobody wrote")  # no writer: as between two serving periods
        os.close(slaves.pop())  # the container is gone
        with trio.fail_after(10):
            await session.done.wait()
            assert await session.write_input(b"new", lambda n: None) is False
        assert session.handed_input == b""
