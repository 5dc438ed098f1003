"""Session records as older daemons wrote them (see consoled/io/record.py).

A reexec or the fd store hands a new daemon the records an older one made;
these build them byte for byte from the layout that daemon used, not from
today's code, so a test of loading them tests what was really written.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

from consoled.io.fds import OwnedFd
from consoled.io.record import DATA_OFFSET, INDEX_SLOTS, Record
from consoled.io.timeindex import ENTRY

#: Versions 1 and 2: the ring's slack, and where the metadata slots are.
OLD_SLACK = 64 * 1024
OLD_SLOTS = (64, 2080)


def old_record(version: int, scrollback: int, meta: dict[str, Any], output: bytes = b"") -> int:
    """A memfd holding a version 1 or 2 record (``output`` in its ring, no times).

    Version 1 has no time index; version 2 has an empty one after its ring.
    """
    assert version in (1, 2) and len(output) <= scrollback
    capacity = scrollback + OLD_SLACK
    index_at = -(-(DATA_OFFSET + capacity) // 4096) * 4096
    fd = os.memfd_create("old-record", os.MFD_CLOEXEC)
    os.ftruncate(
        fd, DATA_OFFSET + capacity if version == 1 else index_at + INDEX_SLOTS * ENTRY.size
    )
    packed = msgpack.packb(meta)
    head = struct.pack("<8sII", b"consoled", version, DATA_OFFSET)
    head += struct.pack("<QQ", capacity, len(output))
    head += struct.pack("<QII", 1, 0, len(packed))  # sequence 1: slot B holds it
    head += struct.pack("<IIQ", INDEX_SLOTS, 0, index_at) if version == 2 else bytes(16)
    os.pwrite(fd, head, 0)
    os.pwrite(fd, packed, OLD_SLOTS[1])
    os.pwrite(fd, output, DATA_OFFSET)
    return fd


def load_old(version: int, scrollback: int, meta: dict[str, Any], output: bytes = b"") -> Record:
    """:func:`old_record`, loaded as a successor loads it."""
    return Record.load(OwnedFd(old_record(version, scrollback, meta, output), "record"))


def reload(rec: Record) -> Record:
    """The record as a successor, or the daemon restarted from the fd store, finds it."""
    assert rec.owner is not None
    return Record.load(OwnedFd(os.dup(rec.owner.fd), "record"))
