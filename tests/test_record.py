"""A session record's versions: each record keeps the layout it was made with.

Pure tests on real memfds.  A new record says its own slack (how far the
native relay's thread may read ahead, and how much more the ring holds than
it exposes); one an older daemon made has none and keeps its smaller slack
and its metadata slots through every reload, so a reexec into a daemon with
another slack neither shrinks a ring nor refuses a small one.
"""

from __future__ import annotations

import os
import struct

import pytest

from consoled.io.fds import OwnedFd
from consoled.io.record import MAX_SLACK, SLOT_SIZE, VERSION, WRITE_SLACK, Record, RecordError
from tests.support.records import OLD_SLACK, OLD_SLOTS, load_old, reload


def version_of(rec: Record) -> int:
    assert rec.owner is not None
    return int.from_bytes(os.pread(rec.owner.fd, 4, 8), "little")


def test_a_new_record_says_its_slack_and_exposes_its_scrollback_after_a_reload() -> None:
    rec = Record.create(4096, {"name": "new"})
    try:
        data = bytes(range(256)) * 40  # 10,240 bytes: more than the scrollback
        rec.append(data)
        layout = rec.layout()
        assert layout is not None
        assert (layout.slack, layout.capacity) == (WRITE_SLACK, 4096 + WRITE_SLACK)
        again = reload(rec)
        try:
            assert (version_of(again), again.scrollback) == (VERSION, 4096)
            assert again.getvalue() == data[-4096:]
            assert again.owner is not None
            assert again.layout() == layout._replace(fd=again.owner.fd)
        finally:
            again.close()
    finally:
        rec.close()


def test_an_older_daemons_record_keeps_its_slack_and_its_slots() -> None:
    output = b"from the daemon before\n"
    rec = load_old(2, 4096, {"name": "old"}, output)
    try:
        layout = rec.layout()
        assert layout is not None
        # Its scrollback is what it was: not shrunk by today's larger slack.
        assert (rec.scrollback, layout.slack, layout.capacity) == (
            4096,
            OLD_SLACK,
            4096 + OLD_SLACK,
        )
        assert rec.getvalue() == output
        rec.update_meta(name="renamed")
        rec.append(b"and from this one\n")
        assert rec.owner is not None
        # The metadata went to the slots of its own layout, and it is still version 2.
        slot = 0  # sequence 2, the next after the one it was loaded with
        (length,) = struct.unpack("<I", os.pread(rec.owner.fd, 4, 40 + 4 * slot))
        assert b"renamed" in os.pread(rec.owner.fd, length, OLD_SLOTS[slot])
        again = reload(rec)
        try:
            assert version_of(again) == 2
            assert again.meta == {"name": "renamed"}
            assert again.getvalue() == output + b"and from this one\n"
            assert again.scrollback == 4096
        finally:
            again.close()
    finally:
        rec.close()


def test_an_older_daemons_record_takes_the_metadata_its_slots_took() -> None:
    # 2,000 bytes of metadata fit a version 2 slot (2,016), not a new one (1,984).
    meta = {"command": "x" * 1990}
    rec = load_old(2, 4096, {"name": "old"})
    try:
        rec.write_meta(meta)
        again = reload(rec)
        try:
            assert again.meta == meta
        finally:
            again.close()
    finally:
        rec.close()
    new = Record.create(4096, {"name": "new"})
    try:
        with pytest.raises(RecordError, match=f"exceeds {SLOT_SIZE}"):
            new.write_meta(meta)
    finally:
        new.close()


@pytest.mark.parametrize("slack", [0, 4096, MAX_SLACK + 1, 1 << 31])
def test_a_record_that_says_a_bad_slack_is_refused(slack: int) -> None:
    rec = Record.create(4096, {"name": "bad"})
    try:
        assert rec.owner is not None
        os.pwrite(rec.owner.fd, struct.pack("<I", slack), 64)
        owner = OwnedFd(os.dup(rec.owner.fd), "record")
        try:
            with pytest.raises(RecordError, match=f"bad slack \\({slack} bytes\\)"):
                Record.load(owner)
        finally:
            owner.close()  # the caller keeps it when load raises
    finally:
        rec.close()


def test_a_ring_smaller_than_its_slack_is_refused() -> None:
    fd = os.memfd_create("small", os.MFD_CLOEXEC)
    owner = OwnedFd(fd, "record")
    try:
        rec = Record.create(4096, {"name": "small"})
        try:
            assert rec.owner is not None
            head = bytearray(os.pread(rec.owner.fd, 4096, 0))
            struct.pack_into("<Q", head, 16, WRITE_SLACK - 1)  # capacity
            os.ftruncate(fd, 4096 + WRITE_SLACK)
            os.pwrite(fd, bytes(head), 0)
        finally:
            rec.close()
        with pytest.raises(RecordError, match="bad ring size"):
            Record.load(owner)
    finally:
        owner.close()
