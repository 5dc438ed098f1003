"""When output arrived: the session record's time index.

Pure tests on real memfds: the index dates lines (not keystrokes), coalesces,
never goes back in time, stays bounded, and comes back from a loaded record
(a reexec's or the fd store's), a version 1 record upgraded, a compaction
cut short by a crash, or a record that lived in memory.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from consoled.io.record import INDEX_SLOTS, Record
from consoled.io.timeindex import ENTRY, RESOLUTION, TimeIndex, decode
from consoled.server import logfile
from consoled.server.logfile import LogDir, LogFile, LogFormat
from tests.support.records import load_old, reload

T0 = 1_800_000_000_000_000_000
MS = 1_000_000


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def record() -> AsyncIterator[Record]:
    rec = Record.create(4096, {"name": "t"})
    assert rec.durable
    try:
        yield rec
    finally:
        rec.close()


def feed(rec: Record, clock: Clock, batches: list[tuple[int, bytes]]) -> None:
    """Append each batch ``ms`` milliseconds after the previous one."""
    rec.clock = clock
    for ms, data in batches:
        clock.now += ms * MS
        rec.append(data)


async def test_lines_are_dated_keystrokes_are_not(record: Record) -> None:
    clock = Clock()
    # A prompt, keys echoed one by one, then Enter, the command's output, and the next prompt.
    feed(record, clock, [(0, b"# "), (200, b"l"), (200, b"s"), (200, b"\r\n")])
    feed(record, clock, [(5, b"a b\r\n"), (3, b"c\r\n"), (12, b"# ")])
    assert record.time_at(0) == T0  # the prompt's line
    assert record.time_at(2) == T0  # keys typed on it: no entry of their own
    assert record.time_at(6) == T0 + 605 * MS  # the output's first line
    assert record.time_at(11) == T0 + 605 * MS  # 3 ms later: within RESOLUTION, coalesced
    assert record.time_at(14) == T0 + 620 * MS
    assert len(record._index) == 3
    again = reload(record)
    try:
        assert [again.time_at(i) for i in range(record.end)] == [
            record.time_at(i) for i in range(record.end)
        ]
    finally:
        again.close()


async def test_times_never_go_back(record: Record) -> None:
    clock = Clock()
    feed(record, clock, [(0, b"one\n"), (50, b"two\n")])
    clock.now -= 3600 * 1000 * MS  # the wall clock is set back an hour
    feed(record, clock, [(0, b"three\n"), (20, b"four\n")])
    clock.now += 3600 * 1000 * MS
    feed(record, clock, [(0, b"five\n")])
    times = [record.time_at(i) for i in range(record.end)]
    assert times == sorted(times)  # type: ignore[type-var]
    # Set back, the clock dates nothing until it is past the newest entry again.
    assert record.time_at(len(b"one\ntwo\n")) == T0 + 50 * MS
    assert record.time_at(record.end - 1) == T0 + 70 * MS


async def test_the_index_stays_bounded_and_covers_the_ring(record: Record) -> None:
    clock = Clock()
    feed(record, clock, [(20, b"line %d\n" % i) for i in range(3 * INDEX_SLOTS)])
    assert 0 < len(record._index) <= INDEX_SLOTS
    # The bytes the ring holds still have times, the newest exactly, older ones coarser.
    assert record.time_at(record.start) is not None
    assert record.time_at(record.end - 1) == clock.now
    times = [record.time_at(i) for i in range(record.start, record.end)]
    assert times == sorted(times)  # type: ignore[type-var]
    again = reload(record)
    try:
        assert again.time_at(record.start) == record.time_at(record.start)
        assert again.time_at(record.end - 1) == clock.now
    finally:
        again.close()


def test_a_compaction_cut_short_keeps_true_entries() -> None:
    old = TimeIndex()
    for i in range(16):
        old.add(i * 10, T0 + i * RESOLUTION)
    new = TimeIndex()
    new.offsets, new.times = old.offsets[:], old.times[:]
    new.thin(first=35, keep=8)
    stored, rewritten = old.encode(), new.encode()
    for cut in range(0, len(rewritten) + 1, ENTRY.size):
        # Rewritten in place, front to back: the new entries, then what was there before.
        found = decode(rewritten[:cut] + stored[cut:])
        pairs = list(zip(found.offsets, found.times, strict=True))
        assert pairs == sorted(pairs) and len(pairs) >= len(new)
        assert set(pairs) <= set(zip(old.offsets, old.times, strict=True))


async def test_a_version_1_record_is_upgraded() -> None:
    # What that daemon's record looked like: version 1, no index, the ring last.
    upgraded = load_old(1, 4096, {"name": "v1"}, b"written by an older daemon\n")
    try:
        assert upgraded.getvalue() == b"written by an older daemon\n"
        assert upgraded.time_at(0) is None  # from before times were kept
        clock = Clock()
        feed(upgraded, clock, [(0, b"and then by this one\n")])
        assert upgraded.time_at(27) == T0
        assert upgraded.owner is not None
        assert os.pread(upgraded.owner.fd, 4, 8) == struct.pack("<I", 2)
        again = reload(upgraded)
        try:
            assert (again.time_at(0), again.time_at(27)) == (None, T0)
        finally:
            again.close()
    finally:
        upgraded.close()


async def test_a_record_in_memory_keeps_its_times_when_made_durable() -> None:
    rec = Record(None, 4096, 0, {"name": "m"}, 0)
    clock = Clock()
    feed(rec, clock, [(0, b"one\n"), (30, b"two\n")])
    rec.make_durable()
    assert rec.durable
    try:
        again = reload(rec)
        try:
            assert (again.time_at(0), again.time_at(4)) == (T0, T0 + 30 * MS)
        finally:
            again.close()
    finally:
        rec.close()


async def test_a_reloaded_record_reads_its_index_before_the_ring_moves(record: Record) -> None:
    # A successor reads each record's index with its first use, not at adoption
    # (a thousand sessions' indexes were a quarter of a reexec's pause).  The
    # first append must still find where the predecessor left off: mid-line here,
    # and the end about to move past the byte that says so.
    clock = Clock()
    feed(record, clock, [(0, b"x" * 4000 + b"\n"), (100, b"half a line")])
    again = reload(record)
    try:
        clock.now += 500 * MS
        again.clock = clock
        start = again.end
        again.append(b"y" * 3000 + b" and its end\n")
        clock.now += 500 * MS
        again.append(b"the next line\n")
        # The rest of the half line belongs to it: no entry of its own.
        assert again.time_at(start) == T0 + 100 * MS
        assert again.time_at(again.end - 1) == T0 + 1100 * MS
    finally:
        again.close()
    skipped = reload(record)
    try:
        skipped.clock = clock
        skipped.skip(10)
        clock.now += 100 * MS
        skipped.append(b"after the gap\n")
        assert skipped.time_at(skipped.end - 1) == T0 + 1200 * MS
    finally:
        skipped.close()


def test_an_adopted_log_file_reopens_its_sidecar_with_the_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A successor reopens a raw log's sidecar when it first writes, not when it
    # adopts the file (three opens per session were a third of a reexec's pause).
    clock = Clock()
    monkeypatch.setattr(logfile, "time", SimpleNamespace(time_ns=clock))
    with contextlib.closing(LogDir.open(tmp_path / "logs")) as logdir:
        log = LogFile.create(logdir, "web", LogFormat.RAW, max_size=0, max_files=2)
        try:
            log.write(b"one\n", 4)
            clock.now += 100 * MS
            log.write(b"half", 8)
            adopted = LogFile.adopt(logdir, log.meta(), log.owner.dup(), writing=True)
        finally:
            log.close()
        try:
            assert adopted._index is None  # not reopened yet
            clock.now += 100 * MS
            adopted.write(b" a line\n", 16)  # the rest of the half line: no entry of its own
            clock.now += 100 * MS
            adopted.write(b"three\n", 22)
        finally:
            adopted.close()
    entries = list(ENTRY.iter_unpack((tmp_path / "logs" / "web.log.idx").read_bytes()))
    assert entries == [(0, T0), (4, T0 + 100 * MS), (16, T0 + 300 * MS)]
    assert (tmp_path / "logs" / "web.log").read_bytes() == b"one\nhalf a line\nthree\n"


def test_a_new_log_file_gets_its_sidecar_with_its_first_output(tmp_path: Path) -> None:
    # Creating a file costs most of a millisecond on some disks, while a runtime
    # waits for the console socket: the sidecar waits for output.  A previous
    # session's sidecar never passes for the new one's.
    logs = tmp_path / "logs"
    with contextlib.closing(LogDir.open(logs)) as logdir:
        (logs / "web.log.idx").write_bytes(ENTRY.pack(0, T0) * 3)  # a previous session's
        log = LogFile.create(logdir, "web", LogFormat.RAW, max_size=0, max_files=2)
        try:
            assert not (logs / "web.log.idx").exists()
            before = time.time_ns()
            log.write(b"first line\n", 11)
            after = time.time_ns()
        finally:
            log.close()
    entries = list(ENTRY.iter_unpack((logs / "web.log.idx").read_bytes()))
    assert len(entries) == 1
    assert entries[0][0] == 0 and before <= entries[0][1] <= after
