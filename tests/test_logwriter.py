"""Log files written by threads: a disk that stalls holds only its own files.

Against real files, and a real frozen file system (``fsfreeze`` on an ext4
loop mount, see tests/support/frozen.py) for the disk that stalls: its
writes wait in the kernel, uninterruptibly, as on an NFS server that went
away.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio

from consoled.io.fds import OwnedFd
from consoled.io.record import Record
from consoled.server import logwriter
from consoled.server.logfile import LogDir, LogFile, LogFormat
from consoled.server.logpool import LogWriters
from consoled.server.logwriter import LogWriter
from tests.support.frozen import FreezableDir, freezable_dir

#: Room for every wait: far more than any takes when it works.
WAIT = 10.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[FreezableDir]:
    with freezable_dir(tmp_path) as disk:
        yield disk


class Log:
    """A session's record and log file, as the daemon has them, written through a pool."""

    def __init__(
        self,
        pool: LogWriters,
        directory: Path | LogDir,
        *,
        ring: int = 1 << 20,
        **kw: int,
    ) -> None:
        if isinstance(directory, LogDir):
            self.dir, self.own_dir = directory, False
        else:
            directory.mkdir(mode=0o700)
            self.dir, self.own_dir = LogDir.open(directory), True
        self.pool = pool
        self.record = Record.create(ring, {}, label="test")
        self.opened: list[OwnedFd] = []
        self.open_at_swap: list[bool] = []
        self.max_size = kw.get("max_size", 0)
        self.max_files = kw.get("max_files", 2)
        self._writer: LogWriter | None = None

    @property
    def writer(self) -> LogWriter:
        """Made (and its file queued for creation) when first used."""
        if self._writer is None:
            file = LogFile.unopened(
                self.dir, "web", LogFormat.RAW, max_size=self.max_size, max_files=self.max_files
            )
            self._writer = LogWriter.create(self.pool, file, self.record, self)
        return self._writer

    #: The session's name, as a LogOwner has it.
    name = "web"

    def log_replaced(self, owner: OwnedFd) -> None:
        # What the service manager is given is open (those it replaces are
        # closed only after).
        self.open_at_swap.append(not owner.closed)
        self.opened.append(owner)

    def output(self, data: bytes) -> None:
        """What a session's reader does with a batch (see Session.publish)."""
        self.record.append(data)
        self.writer.write(data, self.record.end)

    def written(self) -> bytes:
        """Every file of the log, oldest first."""
        names = sorted(
            (n for n in os.listdir(self.dir.path) if n.startswith("web.log") and "idx" not in n),
            key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0,
        )
        return b"".join(Path(self.dir.path, n).read_bytes() for n in names)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.record.close()
        if self.own_dir:
            self.dir.close()


async def settle(log: Log) -> None:
    with trio.fail_after(WAIT):
        await log.writer.wait_idle()


async def test_output_reaches_the_file_in_order_and_rotations_swap_safely(tmp_path: Path) -> None:
    pool = LogWriters()
    log = Log(pool, tmp_path / "logs", max_size=64 * 1024, max_files=4)
    try:
        lines = [b"line %06d\n" % n for n in range(15_000)]  # 180 KB: two rotations
        for n in range(0, len(lines), 7):
            log.output(b"".join(lines[n : n + 7]))
        await settle(log)
        assert log.written() == b"".join(lines)
        assert log.writer.written_to == log.record.end
        # The creation and each rotation handed the open file to the event loop
        # (the newest, when the loop got to it after two); the files rotated
        # away are closed since.
        assert 1 <= len(log.opened) <= 3 and all(log.open_at_swap)
        assert not log.opened[-1].closed
        fds = os.listdir("/proc/self/fd")
        assert sum(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("web.log")
                   for fd in fds if os.path.exists(f"/proc/self/fd/{fd}")) == 2  # fmt: skip
    finally:
        log.close()
        assert pool.close(WAIT)


async def test_a_frozen_disk_holds_only_its_files(tmp_path: Path, disk: FreezableDir) -> None:
    # Was (writes on the event loop): the first write to the frozen disk held
    # the event loop, every console and every client, until the thaw.
    pool = LogWriters()
    stalled = Log(pool, disk.path / "logs")
    healthy = Log(pool, tmp_path / "logs")
    try:
        stalled.output(b"before the freeze\n")
        await settle(stalled)
        disk.freeze()
        with structlog.testing.capture_logs() as logged:
            # Output beyond what may queue: the reader waits for the writer,
            # gives up after STALL_TIMEOUT and goes on without the file.
            started = time.monotonic()
            chunk = b"x" * 4095 + b"\n"
            for _ in range(2 * logwriter.MAX_QUEUED // len(chunk)):
                stalled.output(chunk)
                if stalled.writer.full:
                    with trio.fail_after(WAIT):
                        await stalled.writer.wait_room()
            waited = time.monotonic() - started
            assert stalled.writer.stalled
            assert logwriter.STALL_TIMEOUT <= waited < logwriter.STALL_TIMEOUT + 2
            assert [e["event"] for e in logged] == ["logfile.stalled"]
            # Another file is written meanwhile, by another thread.
            healthy.output(b"written while the other disk is frozen\n")
            await settle(healthy)
            assert healthy.written() == b"written while the other disk is frozen\n"
            # `logs` does not wait for the stuck file for long: the ring will do.
            started = time.monotonic()
            assert await stalled.writer.snapshot() is None
            assert time.monotonic() - started < logwriter.STALL_TIMEOUT + 2
            # Stalled, it queues nothing: output goes on into the ring alone.
            stalled.output(b"while frozen\n")
            assert not stalled.writer.full
            disk.thaw()
            # The stuck write returns; the file catches up from the ring.
            with trio.fail_after(WAIT):
                while stalled.writer.stalled or not stalled.writer.idle:
                    await stalled.writer.wait_idle()
                    await trio.lowlevel.checkpoint()  # the writer's news comes in
            assert stalled.written() == stalled.record.getvalue()
            assert stalled.written().endswith(b"while frozen\n")
            assert "logfile.writing_again" in [e["event"] for e in logged]
            assert "logfile.gap" not in [e["event"] for e in logged]
        stalled.output(b"after\n")
        await settle(stalled)
        assert stalled.written().endswith(b"while frozen\nafter\n")
    finally:
        disk.thaw()
        stalled.close()
        healthy.close()
        assert pool.close(WAIT)


async def test_a_file_stalled_past_its_ring_has_a_gap(tmp_path: Path, disk: FreezableDir) -> None:
    pool = LogWriters()
    log = Log(pool, disk.path / "logs", ring=64 * 1024)
    try:
        log.output(b"before\n")
        await settle(log)
        disk.freeze()
        with structlog.testing.capture_logs() as logged:
            for n in range(400):
                log.output(b"%04d" % n + b"." * 1019 + b"\n")  # 400 KiB, the ring holds 64
                if log.writer.full:
                    with trio.fail_after(WAIT):
                        await log.writer.wait_room()
            assert log.writer.stalled
            disk.thaw()
            with trio.fail_after(WAIT):
                while log.writer.stalled or not log.writer.idle:
                    await log.writer.wait_idle()
                    await trio.lowlevel.checkpoint()
        gaps = [e for e in logged if e["event"] == "logfile.gap"]
        assert len(gaps) == 1
        written = log.written()
        # What the stuck write held, then the ring: nothing twice, nothing torn.
        assert written.endswith(log.record.getvalue())
        assert len(written) + gaps[0]["missing"] == log.record.end
        assert written.startswith(b"before\n")
    finally:
        disk.thaw()
        log.close()
        assert pool.close(WAIT)


async def test_a_file_is_created_off_the_event_loop(disk: FreezableDir) -> None:
    pool = LogWriters()
    log = Log(pool, disk.path / "logs")
    disk.freeze()
    try:
        log.output(b"first words\n")  # its file is queued: creating it waits for the thaw
        assert not log.opened
        disk.thaw()
        await settle(log)
        assert log.written() == b"first words\n"
        assert len(log.opened) == 1
    finally:
        disk.thaw()
        log.close()
        assert pool.close(WAIT)


async def test_a_log_removed_and_made_again_is_never_mixed_up(
    tmp_path: Path, disk: FreezableDir
) -> None:
    """A name's operations wait for those another writer queued before on it."""
    # The old session's writer is stuck with its last output when it is
    # removed and a new session of the name made: its files must be gone
    # before the new file is made (else the new one would move them aside,
    # and the old one's removal remove the new file).
    pool = LogWriters()
    (disk.path / "logs").mkdir(mode=0o700)
    logdir = LogDir.open(disk.path / "logs")
    old = Log(pool, logdir)
    new = Log(pool, logdir)
    try:
        old.output(b"old\n")
        await settle(old)
        disk.freeze()
        old.output(b"more old\n")  # its writer waits for the thaw
        old.writer.remove_files()
        old.writer.close()
        new.output(b"new\n")
        disk.thaw()
        await settle(old)
        await settle(new)
        assert sorted(os.listdir(logdir.path)) == ["web.log", "web.log.idx"]
        assert Path(logdir.path, "web.log").read_bytes() == b"new\n"
    finally:
        disk.thaw()
        old.close()
        new.close()
        logdir.close()
        assert pool.close(WAIT)
