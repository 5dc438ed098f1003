"""A session's durable state in a memfd: a small metadata header, its output ring, a time index.

The record is what lets a session outlive the process that holds it.  A
reexec hands the memfd to the successor, and under systemd it sits in the
service manager's fd store, so after a crash the restarted daemon finds the
session's name, state and newest output exactly as they were.  The daemon
reads and writes it with ``pread``/``pwrite``: no mapping, so a failing
write is an ``OSError`` to handle, never a SIGBUS.

Layout, version 3 (little-endian)::

    0      magic "consoled", version u32, data offset u32
    16     ring capacity u64, end u64 (bytes ever appended)
    32     metadata sequence u64, length of slot A u32, length of slot B u32
    48     time index: slots u32, entries u32, file offset u64
    64     slack u32 (the ring's bytes beyond those exposed), zeros to 128
    128    slot A: msgpack metadata (1,984 bytes)
    2112   slot B: the same
    4096   the ring: the byte at stream offset o is at 4096 + o % capacity
    I      the time index: ``slots`` entries of 16 bytes (see :mod:`.timeindex`),
           at I = 4096 + capacity rounded up to a page

Versions 1 and 2 have no slack field: their slack is 64 KiB, their slots
start at 64 and 2080 and hold 2,016 bytes.  A record keeps the layout it was
made with for its whole life, through any number of reexecs.

Metadata is written to the slot the next sequence number selects, then the
sequence number: a crash between the two leaves the previous metadata
intact.  Output is written before ``end``; the ring holds its slack (for a
new record :data:`WRITE_SLACK`) more than it exposes, so bytes being
overwritten by an append that a crash interrupted are never among those
exposed, and the native relay's thread may read that far ahead of what the
event loop has taken.

The time index says when output arrived (``logs --timestamps``, ``--since``,
``--until``).  An entry is written after the output it dates, then the
entry count.  When all :data:`INDEX_SLOTS` are used, entries for bytes the
ring no longer holds are dropped and the oldest half is thinned, and the
index is rewritten in place, front to back: a crash in the middle leaves
entries that are each still true, and loading keeps those that sort.  A
version 1 record (no index) is upgraded when it is loaded: the index goes
after its ring, and its output from before has no time.

When no memfd can be had (the daemon is out of fds), a record falls back to
memory: the session is served the same way but does not survive a crash,
and :meth:`Record.make_durable` gets it a memfd before a reexec.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

import msgpack

from .fds import OwnedFd
from .relay import RingLayout
from .scrollback import Scrollback
from .timeindex import ENTRY, TimeIndex, decode, entry_time

MAGIC: Final = b"consoled"
VERSION: Final = 3
#: The versions :meth:`Record.load` takes (a version 1 record is upgraded to 2).
LOADABLE: Final = (1, 2, 3)
DATA_OFFSET: Final = 4096
_HEAD: Final = struct.Struct("<8sII")  # magic, version, data offset
_END: Final = struct.Struct("<Q")
_META: Final = struct.Struct("<QII")  # sequence, length A, length B
_INDEX_HEAD: Final = struct.Struct("<IIQ")  # slots, entries, file offset
_INDEX_HEAD_AT: Final = 48
_ENTRIES_AT: Final = 52
_SLACK: Final = struct.Struct("<I")
_SLACK_AT: Final = 64
#: Bytes a new record's ring holds beyond its exposed scrollback: how far the
#: native relay's thread may read ahead of the event loop.  Twice a pty read
#: batch, so the thread goes on reading while the event loop takes the last.
WRITE_SLACK: Final = 128 * 1024
#: The slack a record may say it has: at least the Python relay's read
#: (``pty.READ_SIZE``), at most a frame's data.
MIN_SLACK: Final = 64 * 1024
MAX_SLACK: Final = 256 * 1024
#: Largest ring accepted when loading a record (a sanity bound).
MAX_CAPACITY: Final = 1 << 30
#: Entries in the time index (32 KiB).
INDEX_SLOTS: Final = 2048
_PAGE: Final = 4096


class _Layout(NamedTuple):
    """What differs between a record's versions."""

    version: int
    slots: tuple[int, int]  # where metadata slots A and B start
    slot_size: int
    slack: int


#: Versions 1 and 2 (a version 1 record is written as 2 once it has an index).
_V2: Final = _Layout(2, (64, 2080), 2016, 64 * 1024)
#: A new record.
_CURRENT: Final = _Layout(VERSION, (128, 2112), 1984, WRITE_SLACK)
#: The most metadata a new record holds.
SLOT_SIZE: Final = _CURRENT.slot_size


def _index_offset(capacity: int) -> int:
    """Where the time index of a ring of ``capacity`` bytes starts."""
    return -(-(DATA_OFFSET + capacity) // _PAGE) * _PAGE


class RecordError(Exception):
    """A memfd is not a readable session record; the message says why."""


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise RecordError(f"record is truncated at offset {offset}")
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


class Record:
    """The durable state of one session.

    Use :meth:`create` or :meth:`load`; ``scrollback`` is the number of
    newest bytes exposed by :meth:`tail`.
    """

    def __init__(
        self,
        owner: OwnedFd | None,
        scrollback: int,
        end: int,
        meta: dict[str, Any],
        seq: int,
        *,
        layout: _Layout = _CURRENT,
    ) -> None:
        self._owner = owner
        self.scrollback = scrollback
        self._layout = layout
        self._capacity = scrollback + layout.slack
        self.end = end
        self.meta = meta
        self._seq = seq
        # The fallback when there is no memfd: the same bytes in memory.
        self._memory = Scrollback(scrollback) if owner is None else None
        self._valid_from = 0  # output before this offset was lost (see skip)
        self._index = TimeIndex()
        #: Where the index is stored (0: in memory only).
        self._index_at = 0
        #: The last byte appended was a newline (a line starts with the next).
        self._at_line_start = True
        #: A loaded record's index, read when first needed (see load).
        self._unloaded_index: tuple[int, bytes, int] | None = None
        #: The wall clock output is dated by (nanoseconds since the epoch).
        self.clock: Callable[[], int] = time.time_ns

    # --- creation ---------------------------------------------------------------------

    @classmethod
    def create(cls, scrollback: int, meta: Mapping[str, Any], label: str = "session") -> Record:
        """A new, empty record in a fresh memfd, or in memory if none can be had.

        Raises:
            RecordError: ``meta`` does not fit its slot.
        """
        meta = dict(meta)
        try:
            owner = OwnedFd(os.memfd_create(f"consoled:{label}", os.MFD_CLOEXEC), "record")
        except OSError:
            owner = None  # out of fds or memory
        if owner is not None:
            try:
                fd = owner.fd
                capacity = scrollback + WRITE_SLACK
                os.ftruncate(fd, _index_offset(capacity) + INDEX_SLOTS * ENTRY.size)
                _pwrite_all(fd, struct.pack("<QQ", capacity, 0), 16)
                _pwrite_all(fd, _SLACK.pack(WRITE_SLACK), _SLACK_AT)
                record = cls(owner, scrollback, 0, {}, 0)
                record._index_at = _index_offset(capacity)
                _pwrite_all(fd, _INDEX_HEAD.pack(INDEX_SLOTS, 0, record._index_at), _INDEX_HEAD_AT)
                _pwrite_all(fd, _HEAD.pack(MAGIC, VERSION, DATA_OFFSET), 0)
                record.write_meta(meta)
                return record
            except OSError:
                owner.close()  # out of memory, or past RLIMIT_FSIZE (EFBIG): memory will do
            except BaseException:
                owner.close()
                raise
        record = cls(None, scrollback, 0, meta, 0)
        record._check_meta(meta)
        return record

    @classmethod
    def load(cls, owner: OwnedFd) -> Record:
        """Read a record handed back by a predecessor or the service manager.

        The caller keeps ownership of ``owner`` if this raises.

        Raises:
            RecordError: it is not a record of this version, or it is damaged.
        """
        fd = owner.fd
        try:
            head = _pread_exact(fd, _SLACK_AT + _SLACK.size, 0)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise RecordError(f"cannot read the record: {exc.strerror}") from None
        magic, version, data_offset = _HEAD.unpack_from(head, 0)
        if magic != MAGIC:
            raise RecordError("not a consoled session record (bad magic)")
        if version not in LOADABLE or data_offset != DATA_OFFSET:
            raise RecordError(f"session record version {version} is not supported")
        layout = _V2
        if version >= 3:
            (slack,) = _SLACK.unpack_from(head, _SLACK_AT)
            if not MIN_SLACK <= slack <= MAX_SLACK:
                raise RecordError(f"session record has a bad slack ({slack} bytes)")
            layout = _CURRENT if slack == WRITE_SLACK else _CURRENT._replace(slack=slack)
        capacity, end = struct.unpack_from("<QQ", head, 16)
        if not layout.slack <= capacity <= MAX_CAPACITY or size < DATA_OFFSET + capacity:
            raise RecordError(f"session record has a bad ring size ({capacity} bytes)")
        seq, *lengths = _META.unpack_from(head, 32)
        meta: dict[str, Any] | None = None
        problems = []
        for candidate in (seq, seq - 1):  # the newest slot, else the one before it
            slot = candidate % 2
            length = lengths[slot]
            if candidate < 1 or not 0 < length <= layout.slot_size:
                continue
            try:
                decoded = msgpack.unpackb(
                    _pread_exact(fd, length, layout.slots[slot]), raw=False, strict_map_key=True
                )
            except (OSError, RecordError, ValueError, msgpack.UnpackException) as exc:
                problems.append(str(exc))
                continue
            if isinstance(decoded, dict):
                meta = decoded
                seq = candidate
                break
        if meta is None:
            raise RecordError(f"session record metadata is unreadable {problems}")
        record = cls(owner, capacity - layout.slack, end, meta, seq, layout=layout)
        # Read with the first output or question about times, not now: a
        # successor adopting a thousand sessions would spend a quarter of its
        # pause decoding time indexes.
        record._unloaded_index = (version, head, size)
        return record

    def _index_ready(self) -> None:
        if self._unloaded_index is not None:
            version, head, size = self._unloaded_index
            self._unloaded_index = None
            self._load_index(version, head, size)

    def _load_index(self, version: int, head: bytes, size: int) -> None:
        """Read the time index, or give a version 1 record one (best effort: times are extra)."""
        assert self._owner is not None
        fd = self._owner.fd
        at = _index_offset(self._capacity)
        slots, count, stored_at = _INDEX_HEAD.unpack_from(head, _INDEX_HEAD_AT)
        try:
            if version >= 2 and stored_at == at and size >= at + slots * ENTRY.size:
                count = min(count, slots)
                self._index = decode(os.pread(fd, count * ENTRY.size, at), self.end)
            else:
                # Version 1, or an index header that makes no sense: a fresh index.
                if size < at + INDEX_SLOTS * ENTRY.size:
                    os.ftruncate(fd, at + INDEX_SLOTS * ENTRY.size)
                _pwrite_all(fd, _INDEX_HEAD.pack(INDEX_SLOTS, 0, at), _INDEX_HEAD_AT)
                _pwrite_all(fd, _HEAD.pack(MAGIC, self._layout.version, DATA_OFFSET), 0)
            self._index_at = at
            if len(self):
                last = os.pread(fd, 1, DATA_OFFSET + (self.end - 1) % self._capacity)
                self._at_line_start = last == b"\n"
        except OSError:
            self._index_at = 0  # no room for it: times are kept in memory only

    # --- ownership ----------------------------------------------------------------------

    @property
    def owner(self) -> OwnedFd | None:
        """The memfd's owner, None for a record in memory."""
        return self._owner

    @property
    def durable(self) -> bool:
        return self._owner is not None

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()

    def make_durable(self, label: str = "session") -> None:
        """Move a record kept in memory into a memfd (before a reexec).

        Raises:
            OSError: still no memfd to be had.
        """
        if self._memory is None:
            return
        fresh = Record.create(self.scrollback, self.meta, label)
        if fresh._owner is None:
            raise OSError(24, "cannot create a memfd for the session record")
        fresh.end = self.start  # so that each byte lands at its stream offset's place
        for chunk in self.tail():
            fresh.append(chunk)
        assert fresh.end == self.end
        self._owner, self._memory, self._seq = fresh._owner, None, fresh._seq
        self._index_at, self._layout, self._capacity = (
            fresh._index_at,
            fresh._layout,
            fresh._capacity,
        )
        self._store_index(0)

    # --- metadata -------------------------------------------------------------------------

    def _check_meta(self, meta: Mapping[str, Any]) -> bytes:
        try:
            packed: bytes = msgpack.packb(dict(meta))
        except (OverflowError, ValueError, TypeError) as exc:
            raise RecordError(f"session metadata cannot be recorded: {exc}") from None
        room = self._layout.slot_size
        if len(packed) > room:
            raise RecordError(f"session metadata of {len(packed)} bytes exceeds {room}")
        return packed

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Replace the metadata (atomically with respect to a crash).

        Raises:
            RecordError: it does not fit its slot.
            OSError: the memfd cannot be written.
        """
        packed = self._check_meta(meta)
        self.meta = dict(meta)
        if self._owner is None:
            return
        seq = self._seq + 1
        slot = seq % 2
        fd = self._owner.fd
        _pwrite_all(fd, packed, self._layout.slots[slot])
        _pwrite_all(fd, struct.pack("<I", len(packed)), 40 + 4 * slot)
        _pwrite_all(fd, struct.pack("<Q", seq), 32)
        self._seq = seq

    def update_meta(self, **changes: Any) -> None:
        self.write_meta({**self.meta, **changes})

    # --- the ring ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Bytes exposed now."""
        return min(self.end - self._valid_from, self.scrollback)

    def layout(self) -> RingLayout | None:
        """Where the ring is, for the native relay to append to it (None: in memory).

        The relay writes each batch, then the end, as :meth:`append` does, and
        runs at most the record's slack ahead of :attr:`end`, so it never
        overwrites a byte this exposes; :meth:`appended` counts a batch.
        """
        if self._owner is None:
            return None
        return RingLayout(
            self._owner.fd, self._capacity, DATA_OFFSET, 24, self.end, self._layout.slack
        )

    def appended(self, data: bytes, read_ns: int | None = None) -> None:
        """Count ``data``, which the native relay appended to the ring, having
        read its first byte at ``read_ns`` (nanoseconds since the epoch; now if None)."""
        n = len(data)
        if not n:
            return
        self._index_ready()
        self.end += n
        self._note_time(self.end - n, data, read_ns)

    def skip(self, n: int) -> None:
        """Count ``n`` bytes that could not be stored: the ring exposes nothing before them."""
        self._index_ready()
        self.end += n
        self._valid_from = self.end
        self._at_line_start = True  # not known: the next batch gets a time
        if self._memory is not None:
            self._memory = Scrollback(self.scrollback)

    @property
    def start(self) -> int:
        """Stream offset of the oldest byte exposed."""
        return self.end - len(self)

    def append(self, data: bytes) -> None:
        """Add output to the ring.

        Raises:
            OSError: the memfd cannot be written (out of memory).
        """
        n = len(data)
        if not n:
            return
        self._index_ready()  # before the end moves and the ring is overwritten
        if self._memory is not None:
            self._memory.append(data)
            self.end += n
            self._note_time(self.end - n, data)
            return
        assert self._owner is not None
        fd = self._owner.fd
        cap = self._capacity
        view = memoryview(data)
        offset = self.end
        if n > cap:
            view = view[n - cap :]
            offset += n - cap
        while view:
            pos = offset % cap
            piece = view[: cap - pos]
            _pwrite_all(fd, piece, DATA_OFFSET + pos)
            offset += len(piece)
            view = view[len(piece) :]
        self.end += n
        _pwrite_all(fd, _END.pack(self.end), 24)
        self._note_time(self.end - n, data)

    def tail(self, n: int | None = None) -> list[bytes]:
        """The newest ``n`` exposed bytes (all of them when None), as chunks."""
        available = len(self)
        n = available if n is None else max(0, min(n, available))
        if self._memory is not None:
            return self._memory.tail(n)
        if not n:
            return []
        assert self._owner is not None
        fd = self._owner.fd
        cap = self._capacity
        out = []
        offset = self.end - n
        while n:
            pos = offset % cap
            size = min(n, cap - pos)
            out.append(_pread_exact(fd, size, DATA_OFFSET + pos))
            offset += size
            n -= size
        return out

    def read_from(self, offset: int) -> tuple[int, list[bytes]]:
        """The exposed bytes from stream ``offset`` on.

        Returns:
            The offset the returned bytes really start at (later than asked
            when the ring no longer holds ``offset``) and the bytes.
        """
        first = min(max(offset, self.start), self.end)
        return first, self.tail(self.end - first)

    def getvalue(self) -> bytes:
        return b"".join(self.tail())

    # --- the time index --------------------------------------------------------------------

    def _note_time(self, offset: int, data: bytes, read_ns: int | None = None) -> None:
        """Date the batch just appended at ``offset``, if a line starts in it
        (see .timeindex), by ``read_ns`` or else the clock."""
        index = self._index
        clock = self.clock if read_ns is None else (lambda: read_ns)
        when = entry_time(data, self._at_line_start, index.last_time, clock)
        self._at_line_start = data.endswith(b"\n")
        if when is None:
            return
        if len(index) >= INDEX_SLOTS:
            index.thin(self.start, INDEX_SLOTS * 3 // 4)
            if index.add(offset, when):
                self._store_index(0)
        elif index.add(offset, when):
            self._store_index(len(index) - 1)

    def _store_index(self, first: int) -> None:
        """Write the entries from the ``first``-th on, then their count (never raises)."""
        if self._owner is None or not self._index_at:
            return
        fd = self._owner.fd
        with contextlib.suppress(OSError):  # times are extra: the output is what counts
            _pwrite_all(fd, self._index.encode(first), self._index_at + first * ENTRY.size)
            _pwrite_all(fd, struct.pack("<I", len(self._index)), _ENTRIES_AT)

    def time_at(self, offset: int) -> int | None:
        """When the byte at stream ``offset`` arrived (nanoseconds since the epoch).

        Exact to within the index's resolution for the first byte of a line;
        None for output older than the index (a version 1 record's).
        """
        self._index_ready()
        return self._index.time_at(offset)

    def ends_line_before(self, offset: int) -> bool:
        """Whether the byte before ``offset`` is a newline (True when it is not held)."""
        if offset == self.end:
            self._index_ready()
            return self._at_line_start
        if not self.start < offset <= self.end:
            return True
        if self._owner is None:
            return self.tail(self.end - offset + 1)[0][:1] == b"\n"
        return _pread_exact(self._owner.fd, 1, DATA_OFFSET + (offset - 1) % self._capacity) == b"\n"
