"""A daemon under load: 500 sessions, writers, attach churn, stalled and half-sent clients.

One real ``consoled serve --log-dir`` holds 500 sessions whose slaves the
pty holder keeps (:mod:`tests.support.holder`).  For ``WRITE_SECONDS``:

- 20 of them write numbered lines, paced (each line known byte for byte);
- 45 protocol clients and 5 real ``consoled attach --no-tty`` processes
  attach to random sessions and detach again, in a loop;
- two clients attach to writing sessions and never read: they must be
  dropped as lagged, while a reading client on the same sessions gets
  every byte;
- 300 connections each send half of a 512 KiB frame and hold it: the
  daemon's ``--max-buffered`` admits 32 of them and refuses the others
  with ``buffer_limit``; those it admitted are answered once they finish.

At the end every session is still held and running, every session's log
file holds exactly what its terminal was given, and the daemon's RSS
(sampled from /proc throughout) stayed under ``RSS_BOUND``.  The figures
are printed (``pytest -s``); docs/performance.md quotes one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import trio

from consoled.protocol import ErrorCode
from consoled.protocol import events as ev
from tests.conftest import DaemonFactory
from tests.support.cli import cli
from tests.support.client import AsyncClient
from tests.support.daemon import DaemonProcess
from tests.support.holder import PtyHolder, pty_headroom, streamed
from tests.support.ptyholder import LINE_SIZE

SESSIONS = 500
WRITERS = 20
#: How long the writers write, and how many lines a second each.
WRITE_SECONDS = 15.0
WRITE_RATE = 2000
PROTOCOL_CYCLERS = 45
PROCESS_CYCLERS = 5
HALF_SENDERS = 300
#: Each half-sender's frame and the daemon's bound on unfinished frames:
#: MAX_BUFFERED / HALF of them fit.
FRAME = 512 * 1024
HALF = FRAME // 2
MAX_BUFFERED = 8 * 1024 * 1024
#: Small, so that a client that stops reading lags within seconds.
CLIENT_QUEUE = 256 * 1024
#: What every terminal is given before the writers start.
PREFIX = b"x" * 16
#: The daemon's RSS may never pass this.  Measured: 54-58 MiB at the peak;
#: 126 MiB when --max-buffered lets all 300 halves in (see docs/performance.md).
RSS_BOUND = 96 * 1024 * 1024
#: Bound on any one wait in this test.
TIMEOUT = 30.0


def name_of(index: int) -> str:
    return f"ld{index:03d}"


def expected_output(index: int, lines: dict[int, int]) -> bytes:
    """Everything session ``index``'s terminal was given."""
    return PREFIX + (streamed(index, lines[index]) if index in lines else b"")


def vm_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid``, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    """What the test saw, for the report."""

    started: float = field(default_factory=time.monotonic)
    rss: list[int] = field(default_factory=list)
    protocol_cycles: int = 0
    process_cycles: int = 0
    cycle_output: int = 0
    accepted: int = 0
    refused: int = 0

    def line(self, **more: object) -> str:
        fields = {
            "rss_samples": len(self.rss),
            "rss_peak_mib": round(max(self.rss) / 2**20, 1),
            "protocol_attach_cycles": self.protocol_cycles,
            "process_attach_cycles": self.process_cycles,
            "half_frames_accepted": self.accepted,
            "half_frames_refused": self.refused,
            **more,
        }
        return "load: " + json.dumps(fields)


async def sample_rss(pid: int, figures: Figures) -> None:
    while True:
        figures.rss.append(vm_bytes(pid)["VmRSS"])
        await trio.sleep(0.1)


async def protocol_cycler(
    daemon: DaemonProcess, rng: random.Random, until: float, figures: Figures
) -> None:
    """Attach to random sessions, read a moment, detach; until ``until``."""
    while trio.current_time() < until:
        name = name_of(rng.randrange(SESSIONS))
        client = await AsyncClient.connect(daemon.control_socket)
        try:
            request = ev.Attach(name, read_only=rng.random() < 0.5, replay=rng.choice([0, 1024]))
            attached = await client.request(request)
            assert isinstance(attached, ev.Attached), attached
            with trio.move_on_after(rng.uniform(0.05, 0.3)):
                while True:
                    event = await client.receive()
                    assert isinstance(event, ev.Output), event
                    figures.cycle_output += len(event.data)
            await client.send(ev.Detach())
            while True:
                event = await client.receive()
                if isinstance(event, ev.Ended):
                    assert event.reason is ev.EndReason.DETACHED, event
                    break
                assert isinstance(event, ev.Output), event
            figures.protocol_cycles += 1
        finally:
            await client.aclose()


async def process_cycler(
    daemon: DaemonProcess, rng: random.Random, until: float, figures: Figures
) -> None:
    """``consoled attach --no-tty`` to a writing session, then ctrl-p ctrl-q; in a loop."""
    while trio.current_time() < until:
        name = name_of(rng.randrange(2, WRITERS))  # not the stalled clients' sessions
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "consoled", "attach", "--no-tty", "--replay", "0", name],
            env=daemon.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            with trio.fail_after(TIMEOUT):
                got = 0
                while got < LINE_SIZE:  # attached, and the session's lines come through
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        err = await proc.stderr.receive_some(65536)
                        raise AssertionError(
                            f"consoled attach {name} ended before any output: {err!r}"
                        )
                    got += len(chunk)
                with trio.move_on_after(rng.uniform(0.3, 1.0)):
                    while chunk := await proc.stdout.receive_some(65536):
                        got += len(chunk)
                try:
                    await proc.stdin.send_all(b"\x10\x11")  # the default detach keys
                except trio.BrokenResourceError:
                    err = await proc.stderr.receive_some(65536)
                    raise AssertionError(f"consoled attach {name} exited early: {err!r}") from None
                while chunk := await proc.stdout.receive_some(65536):
                    got += len(chunk)
                err = b""
                while chunk := await proc.stderr.receive_some(65536):
                    err += chunk
                assert await proc.wait() == 0, err
            assert b"detached from " + name.encode() in err, err
            figures.process_cycles += 1
            figures.cycle_output += got
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    await pipe.aclose()


async def observe(daemon: DaemonProcess, name: str) -> tuple[AsyncClient, int, bytearray]:
    """A client attached to ``name`` that will read everything; its first offset."""
    client = await AsyncClient.connect(daemon.control_socket)
    attached = await client.request(ev.Attach(name, read_only=True, replay=0))
    assert isinstance(attached, ev.Attached), attached
    return client, attached.offset, bytearray()


async def read_all(client: AsyncClient, into: bytearray) -> None:
    while True:
        event = await client.receive(timeout=TIMEOUT * 2)
        if isinstance(event, ev.Ended) or event is None:
            return
        assert isinstance(event, ev.Output), event
        into += event.data


def half_frame() -> bytes:
    """A valid ``get_info`` of exactly FRAME bytes (header included), padded."""
    pad = FRAME - 4 - len(msgpack.packb({"type": "get_info", "pad": b""}))
    body: bytes = msgpack.packb({"type": "get_info", "pad": b"p" * (pad - 3)})  # bin 32: 3 more
    assert len(body) == FRAME - 4, len(body)
    return len(body).to_bytes(4, "big") + body


async def hold_half_frames(
    daemon: DaemonProcess, cleanup: contextlib.AsyncExitStack
) -> list[AsyncClient]:
    """HALF_SENDERS connections, each holding the first half of a frame.

    One after another: each half is read by the daemon before the next is
    sent, so the budget sees them in order.
    """
    data = half_frame()
    clients = []
    for _ in range(HALF_SENDERS):
        client = await AsyncClient.connect(daemon.control_socket)
        cleanup.push_async_callback(client.aclose)
        clients.append(client)
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_raw(data[:HALF])
        await client.wait_all_read(TIMEOUT)
    return clients


def answered(client: AsyncClient) -> bool:
    """The daemon said something (refused it) or closed it: without waiting."""
    readable, _, _ = select.select([client.stream.socket.fileno()], [], [], 0)
    return bool(readable)


async def finish_half_frames(
    daemon: DaemonProcess, clients: list[AsyncClient], figures: Figures
) -> None:
    """Refused ones got buffer_limit; the others are answered once they finish.

    The budget is full to the byte with the admitted halves, and finishing a
    frame takes more of it (a read at a time): one admitted sender hangs up
    first, and once the daemon let go of its half, each of the others
    finishes in turn.
    """
    admitted = []
    for client in clients:
        if answered(client):
            figures.refused += 1
            error = await client.receive()
            assert isinstance(error, ev.Error) and error.code is ErrorCode.BUFFER_LIMIT, error
            # Then closed, with the rest of our half unread: EOF or ECONNRESET.
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive() is None
            await client.aclose()
        else:
            admitted.append(client)
    figures.accepted = len(admitted)
    await admitted[0].aclose()
    await daemon.wait_event("client.protocol_error", code="bad_frame")  # closed inside a frame
    rest = half_frame()[HALF:]
    for client in admitted[1:]:
        await client.send_raw(rest)
        client.conn.send(ev.GetInfo())  # what the raw bytes were: our codec's state
        info = await client.receive()
        assert isinstance(info, ev.DaemonInfo), info
        await client.aclose()


async def wait_drained(daemon: DaemonProcess, lines: dict[int, int]) -> None:
    """Until the daemon has read everything every writer wrote."""
    want = {name_of(i): len(expected_output(i, lines)) for i in lines}
    client = await AsyncClient.connect(daemon.control_socket)
    try:
        with trio.fail_after(TIMEOUT):
            while True:  # polling: nothing announces "read up to here"
                got = {s.session: s.bytes_out for s in await client.list_sessions()}
                if all(got[n] == size for n, size in want.items()):
                    return
                await trio.sleep(0.1)
    finally:
        await client.aclose()


@contextlib.contextmanager
def open_files(at_least: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE raised to ``at_least`` if needed; restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(at_least, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_500_sessions_under_load(
    daemon_factory: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    figures = Figures()
    log_dir = tmp_path / "logs"
    rng = random.Random(500)
    with pty_headroom(SESSIONS), open_files(4 * SESSIONS):
        cleanup = contextlib.AsyncExitStack()  # every client this test keeps, closed at the end
        daemon = await daemon_factory(
            "--log-dir", str(log_dir),
            "--max-buffered", str(MAX_BUFFERED),
            "--client-queue", str(CLIENT_QUEUE),
        )  # fmt: skip
        holder = await PtyHolder.start(nursery)
        cleanup.push_async_callback(holder.aclose)
        async with cleanup:
            # 500 sessions, each handed its master as a runtime would.
            t0 = trio.current_time()
            control = await AsyncClient.connect(daemon.control_socket)
            try:
                paths = [await control.create_socket(name_of(i)) for i in range(SESSIONS)]
            finally:
                await control.aclose()
            assert await holder.hand(paths) == SESSIONS
            await daemon.wait_event("session.running", count=SESSIONS, timeout=TIMEOUT)
            intake_s = trio.current_time() - t0
            assert await holder.ask(f"write {len(PREFIX)}") == f"written {SESSIONS}"
            rss_idle = vm_bytes(daemon.pid)["VmRSS"]

            async with trio.open_nursery() as sampler:
                sampler.start_soon(sample_rss, daemon.pid, figures)
                # Readers on the stalled clients' sessions, before anything is written.
                observers = [await observe(daemon, name_of(i)) for i in (0, 1)]
                for client, _, _ in observers:
                    cleanup.push_async_callback(client.aclose)
                for i in (0, 1):
                    client = await AsyncClient.connect(daemon.control_socket)
                    cleanup.push_async_callback(client.aclose)
                    reply = await client.request(ev.Attach(name_of(i), replay=0))
                    assert isinstance(reply, ev.Attached), reply
                with trio.fail_after(WRITE_SECONDS + 3 * TIMEOUT):
                    async with trio.open_nursery() as load:
                        for client, _, into in observers:
                            load.start_soon(read_all, client, into)
                        load_start = trio.current_time()
                        cpu_start = cpu_seconds(daemon.pid)
                        for i in range(WRITERS):
                            await holder.stream(i, WRITE_SECONDS, WRITE_RATE)
                        until = load_start + WRITE_SECONDS - 2.0
                        for cycler, count in (
                            (protocol_cycler, PROTOCOL_CYCLERS),
                            (process_cycler, PROCESS_CYCLERS),
                        ):
                            for _ in range(count):
                                seeded = random.Random(rng.random())
                                load.start_soon(cycler, daemon, seeded, until, figures)
                        half_senders = await hold_half_frames(daemon, cleanup)
                        half_s = trio.current_time() - load_start
                        lines = await holder.wait_streams(WRITE_SECONDS + TIMEOUT)
                        write_s = trio.current_time() - load_start
                        cpu_load = cpu_seconds(daemon.pid) - cpu_start
                        assert sorted(lines) == list(range(WRITERS))
                        await wait_drained(daemon, lines)
                        # The readers then detach: `ended` comes after all the output.
                        for client, _, _ in observers:
                            await client.send(ev.Detach())
                await finish_half_frames(daemon, half_senders, figures)
                sampler.cancel_scope.cancel()
            hwm = vm_bytes(daemon.pid)["VmHWM"]

            # The two who did not read were dropped; the readers of the same
            # sessions got every byte from where they attached.
            await daemon.wait_event("client.detached", count=2, reason="lagged")
            lagged = daemon.find("client.detached", reason="lagged")
            assert sorted(e["session"] for e in lagged) == [name_of(0), name_of(1)], lagged
            assert len(daemon.find("client.lagged")) == 2, daemon.find("client.lagged")
            for k, (_, offset, into) in enumerate(observers):
                full = expected_output(k, lines)
                assert offset <= len(PREFIX)
                assert bytes(into) == full[offset:], (k, len(into), len(full), offset)

            # Every session still held and running; every log file exact.
            assert await holder.hangups() == 0
            result = await cli(daemon, "ls", "--json")
            assert result.returncode == 0, result.stderr
            listed = json.loads(result.stdout)
            assert len(listed) == SESSIONS
            assert {s["state"] for s in listed} == {"running"}
            for i in range(SESSIONS):
                logged = (log_dir / f"{name_of(i)}.log").read_bytes()
                assert logged == expected_output(i, lines), (i, len(logged))
    assert figures.accepted + figures.refused == HALF_SENDERS
    assert MAX_BUFFERED // HALF - 2 <= figures.accepted <= MAX_BUFFERED // HALF
    written = sum(len(expected_output(i, lines)) - len(PREFIX) for i in lines)
    print(
        figures.line(
            sessions=SESSIONS,
            intake_s=round(intake_s, 2),
            sessions_per_s=round(SESSIONS / intake_s),
            half_frames_s=round(half_s, 2),
            writers=WRITERS,
            lines=sum(lines.values()),
            write_s=round(write_s, 1),
            written_mib=round(written / 2**20, 1),
            written_kib_per_s=round(written / 1024 / write_s),
            cycle_output_mib=round(figures.cycle_output / 2**20, 1),
            attach_cycles_per_s=round(
                (figures.protocol_cycles + figures.process_cycles) / (WRITE_SECONDS - 2), 1
            ),
            daemon_cpu_pct=round(cpu_load / write_s * 100),
            rss_idle_mib=round(rss_idle / 2**20, 1),
            rss_hwm_mib=round(hwm / 2**20, 1),
            test_s=round(time.monotonic() - figures.started, 1),
        )
    )
    assert max(figures.rss) < RSS_BOUND and hwm < RSS_BOUND, (max(figures.rss), hwm)
    loud = [e for e in daemon.events if e.get("level") in ("error", "critical")]
    assert not loud, loud
