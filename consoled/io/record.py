"""A session's durable state in a memfd: a small metadata header, then its output ring.

The record is what lets a session outlive the process that holds it.  A
reexec hands the memfd to the successor, and under systemd it sits in the
service manager's fd store, so after a crash the restarted daemon finds the
session's name, state and newest output exactly as they were.  The daemon
reads and writes it with ``pread``/``pwrite``: no mapping, so a failing
write is an ``OSError`` to handle, never a SIGBUS.

Layout (little-endian)::

    0      magic "consoled", version u32, data offset u32
    16     ring capacity u64, end u64 (bytes ever appended)
    32     metadata sequence u64, length of slot A u32, length of slot B u32
    64     slot A: msgpack metadata (2,016 bytes)
    2080   slot B: the same
    4096   the ring: the byte at stream offset o is at 4096 + o % capacity

Metadata is written to the slot the next sequence number selects, then the
sequence number: a crash between the two leaves the previous metadata
intact.  Output is written before ``end``; the ring holds
:data:`WRITE_SLACK` bytes more than it exposes, so bytes being overwritten by
an append that a crash interrupted are never among those exposed.

When no memfd can be had (the daemon is out of fds), a record falls back to
memory: the session is served the same way but does not survive a crash,
and :meth:`Record.make_durable` gets it a memfd before a reexec.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from .fds import OwnedFd
from .scrollback import Scrollback

MAGIC: Final = b"consoled"
VERSION: Final = 1
DATA_OFFSET: Final = 4096
SLOT_SIZE: Final = 2016
_SLOTS: Final = (64, 64 + SLOT_SIZE)
_HEAD: Final = struct.Struct("<8sII")  # magic, version, data offset
_END: Final = struct.Struct("<Q")
_META: Final = struct.Struct("<QII")  # sequence, length A, length B
#: Bytes kept beyond the exposed scrollback (one pty read batch).
WRITE_SLACK: Final = 64 * 1024
#: Largest ring accepted when loading a record (a sanity bound).
MAX_CAPACITY: Final = 1 << 30


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
    ) -> None:
        self._owner = owner
        self.scrollback = scrollback
        self._capacity = scrollback + WRITE_SLACK
        self.end = end
        self.meta = meta
        self._seq = seq
        # The fallback when there is no memfd: the same bytes in memory.
        self._memory = Scrollback(scrollback) if owner is None else None
        self._valid_from = 0  # output before this offset was lost (see skip)

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
                os.ftruncate(fd, DATA_OFFSET + scrollback + WRITE_SLACK)
                _pwrite_all(fd, _HEAD.pack(MAGIC, VERSION, DATA_OFFSET), 0)
                _pwrite_all(fd, struct.pack("<QQ", scrollback + WRITE_SLACK, 0), 16)
                record = cls(owner, scrollback, 0, {}, 0)
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
            head = _pread_exact(fd, 64, 0)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise RecordError(f"cannot read the record: {exc.strerror}") from None
        magic, version, data_offset = _HEAD.unpack_from(head, 0)
        if magic != MAGIC:
            raise RecordError("not a consoled session record (bad magic)")
        if version != VERSION or data_offset != DATA_OFFSET:
            raise RecordError(f"session record version {version} is not supported")
        capacity, end = struct.unpack_from("<QQ", head, 16)
        if not WRITE_SLACK <= capacity <= MAX_CAPACITY or size < DATA_OFFSET + capacity:
            raise RecordError(f"session record has a bad ring size ({capacity} bytes)")
        seq, *lengths = _META.unpack_from(head, 32)
        meta: dict[str, Any] | None = None
        problems = []
        for candidate in (seq, seq - 1):  # the newest slot, else the one before it
            slot = candidate % 2
            length = lengths[slot]
            if candidate < 1 or not 0 < length <= SLOT_SIZE:
                continue
            try:
                decoded = msgpack.unpackb(
                    _pread_exact(fd, length, _SLOTS[slot]), raw=False, strict_map_key=True
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
        record = cls(owner, capacity - WRITE_SLACK, end, meta, seq)
        return record

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

    # --- metadata -------------------------------------------------------------------------

    def _check_meta(self, meta: Mapping[str, Any]) -> bytes:
        packed: bytes = msgpack.packb(dict(meta))
        if len(packed) > SLOT_SIZE:
            raise RecordError(f"session metadata of {len(packed)} bytes exceeds {SLOT_SIZE}")
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
        _pwrite_all(fd, packed, _SLOTS[slot])
        _pwrite_all(fd, struct.pack("<I", len(packed)), 40 + 4 * slot)
        _pwrite_all(fd, struct.pack("<Q", seq), 32)
        self._seq = seq

    def update_meta(self, **changes: Any) -> None:
        self.write_meta({**self.meta, **changes})

    # --- the ring ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Bytes exposed now."""
        return min(self.end - self._valid_from, self.scrollback)

    def skip(self, n: int) -> None:
        """Count ``n`` bytes that could not be stored: the ring exposes nothing before them."""
        self.end += n
        self._valid_from = self.end
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
        if self._memory is not None:
            self._memory.append(data)
            self.end += n
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
