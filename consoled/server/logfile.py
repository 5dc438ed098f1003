"""Per-session log files: every byte read from a master, written as it is read.

Files live flat in the log directory as ``ID.log`` and ``ID@EXEC.log`` ('@'
never occurs in a name; a stem too long for a file name is shortened with a
hash after a '~', which never occurs either).  The directory is opened once,
with ``O_DIRECTORY | O_NOFOLLOW``, and must belong to the daemon's user and
be writable by nobody else.  Files are created 0600 relative to it, after
unlinking whatever was at that name, with ``O_EXCL | O_NOFOLLOW``; files are
read with ``O_NONBLOCK`` and only if they are regular files.  So nothing
planted in the directory (a symlink, a FIFO, a hard link) is ever followed,
truncated or waited on.

Rotation keeps ``max_files - 1`` older files, ``NAME.log.1`` (newest) to
``NAME.log.N``, as kubelet's ``containerLogMaxFiles`` counts them.

A CRI file dates each record.  A raw file has no room for times, so it has a
sidecar, ``NAME.log.idx`` (``NAME.log.1.idx`` once rotated, and so on), of
16-byte ``(file offset, time)`` entries (see :mod:`..io.timeindex`): one
when the file starts, then one for each batch in which a line starts, at
most one per 10 ms.  The sidecar counts towards ``max_size``, so the files
of a log never take more than ``max_size * max_files`` together.

A :class:`LogFile` does its I/O where it is called; the daemon calls it only
from a log writer thread (see :mod:`.logwriter`), never from the event loop,
so a disk that stalls holds only its own files.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import itertools
import os
import stat
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ..io.fds import OwnedFd
from ..io.timeindex import ENTRY, entry_time
from . import cri

_OPEN_TRIES: Final = 5
#: Longest file name most Linux file systems take.
NAME_MAX: Final = 255
#: What a raw log file's sidecar (its time index) is called: the file's name and this.
INDEX_SUFFIX: Final = ".idx"
#: Room kept in a stem for ``.log``, the rotation suffix and a sidecar's.
_SUFFIX_ROOM: Final = len(".log.") + 4 + len(INDEX_SUFFIX)


class Position(NamedTuple):
    """Where a log file stands (see :meth:`LogFile.position`)."""

    stem: str
    written_to: int
    size: int
    rotations: int
    #: Which file is being written (device and inode), None once closed.
    file: list[int] | None


class LogFormat(enum.StrEnum):
    RAW = "raw"
    CRI = "cri"


class LogFileError(Exception):
    """A log file or the log directory cannot be used; the message says why."""


def file_stem(stem: str) -> str:
    """``stem``, shortened with a hash if the file name would be too long."""
    if len(stem) + _SUFFIX_ROOM <= NAME_MAX:
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:16]
    return stem[: NAME_MAX - _SUFFIX_ROOM - 17] + "~" + digest


class LogDir:
    """The open log directory.

    Use :meth:`open`; ``path`` is for messages and ``ls``.
    """

    def __init__(self, path: str, owner: OwnedFd) -> None:
        self.path = path
        self.owner = owner

    @property
    def fd(self) -> int:
        return self.owner.fd

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LogDir:
        """Create (0700) or open the log directory, and check it is safe to use.

        Raises:
            LogFileError: it is a symlink or not a directory, belongs to another
                user, or others can write to it.
        """
        text = os.fspath(path)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(text, flags)
            except FileNotFoundError:
                # Only now: mkdir(2) waits for a frozen or stalled file system
                # even where the directory exists, and a daemon started (or
                # reexecuted) then would hold every console until it answered.
                os.makedirs(text, mode=0o700, exist_ok=True)
                fd = os.open(text, flags)
        except OSError as exc:
            if os.path.islink(text):
                raise LogFileError(
                    f"log directory {text} is a symlink; give its real path"
                ) from None
            raise LogFileError(f"cannot use log directory {text}: {exc.strerror}") from None
        owner = OwnedFd(fd, "logdir")
        st = os.fstat(fd)
        euid = os.geteuid()
        if st.st_uid != euid:
            owner.close()
            raise LogFileError(
                f"log directory {text} belongs to uid {st.st_uid}, not to the daemon (uid {euid})"
            )
        if stat.S_IMODE(st.st_mode) & 0o022:
            owner.close()
            raise LogFileError(
                f"log directory {text} is writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it 0700 or 0755"
            )
        return cls(text, owner)

    def close(self) -> None:
        self.owner.close()

    def open_fresh(self, name: str) -> OwnedFd:
        """Create ``name`` empty (0600), replacing whatever file had the name."""
        for _ in range(_OPEN_TRIES):
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a directory planted at the name, say
                raise LogFileError(
                    f"cannot replace {name!r} in {self.path}: {exc.strerror}"
                ) from None
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY
                    | os.O_CREAT
                    | os.O_EXCL
                    | os.O_NOFOLLOW
                    | os.O_CLOEXEC
                    | os.O_APPEND,
                    0o600,
                    dir_fd=self.fd,
                )
            except FileExistsError:
                continue  # someone raced us to the name; unlink again
            except OSError as exc:
                raise LogFileError(
                    f"cannot create {name!r} in {self.path}: {exc.strerror}"
                ) from None
            return OwnedFd(fd, "logfile")
        raise LogFileError(f"cannot create log file {name!r}: something keeps recreating it")

    def open_existing(self, name: str, flags: int) -> OwnedFd | None:
        """Open a regular file without following links or blocking; None if absent.

        Raises:
            LogFileError: something that is not a regular file has the name.
        """
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LogFileError(f"cannot open {name!r} in {self.path}: {exc.strerror}") from None
        owner = OwnedFd(fd, "logfile")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            owner.close()
            raise LogFileError(f"{name!r} in {self.path} is not a regular file")
        return owner

    def is_file(self, name: str) -> bool:
        """Whether a regular file has the name (a link to one does not count)."""
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(name, dir_fd=self.fd)

    def rename(self, old: str, new: str) -> None:
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)


@dataclass(slots=True)
class LogPart:
    """One file of a log, open for reading, and how much of it to read."""

    owner: OwnedFd
    size: int
    #: Where it is (for messages: it may have been renamed since).
    path: str
    #: Its sidecar (a raw file's time index), if it has one.
    index: OwnedFd | None = None

    def close(self) -> None:
        self.owner.close()
        if self.index is not None:
            self.index.close()


@dataclass(slots=True)
class LogSnapshot:
    """Read-only fds on a session's log files, and how much of each to read."""

    parts: list[LogPart]  # oldest first
    format: LogFormat
    #: Stream offset up to which the files hold the output (they may lag after a write failure).
    written_to: int

    def close(self) -> None:
        for part in self.parts:
            part.close()
        self.parts.clear()


#: Bytes read at a time when a CRI file's newest records are counted.
_TAIL_CHUNK: Final = 256 * 1024
#: Bytes of a record enough to parse its timestamp, stream and tag.
_RECORD_HEAD: Final = 64


def _cri_tail(owner: OwnedFd, start: int, end: int) -> tuple[int, int] | None:
    """The output the whole CRI records between file offsets ``start`` and ``end`` carry.

    Only each record's head is kept (a record may hold megabytes of a line
    without a newline): its length says the rest.

    Returns:
        The bytes of output they carry and the file offset where the last
        whole record ends, or None if those bytes are not CRI records (or
        cannot be read): then nothing is known about them.
    """
    try:
        # The file as it is open (renamed since, perhaps), for reading.
        reader = os.open(f"/proc/self/fd/{owner.fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    carried = 0
    whole = pos = start
    head = b""  # the first bytes of the record being read
    length = 0  # and its length so far
    try:
        while pos < end:
            chunk = os.pread(reader, min(_TAIL_CHUNK, end - pos), pos)
            if not chunk:
                break
            pos += len(chunk)
            at = 0
            while at <= len(chunk):
                newline = chunk.find(b"\n", at)
                stop = len(chunk) if newline < 0 else newline
                head += chunk[at : min(stop, at + _RECORD_HEAD - len(head))]
                length += stop - at
                if newline < 0:
                    break
                _, _, tag, content_head = cri.decode_record(head)
                carried += length - (len(head) - len(content_head)) + (tag == b"F")
                whole += length + 1
                head, length, at = b"", 0, newline + 1
    except (OSError, cri.CriFormatError):
        return None
    finally:
        os.close(reader)
    return carried, whole


#: Largest number a record holds (msgpack's int64); a recorded size past it is not one.
MAX_RECORDED: Final = 2**63 - 1


def _within(recorded: object, size: int) -> int:
    """A recorded file offset, made one of a file of ``size`` bytes."""
    offset: int = int(recorded)  # type: ignore[call-overload]
    return max(0, min(offset, size))


def _file_id(owner: OwnedFd) -> list[int] | None:
    try:
        st = os.fstat(owner.fd)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _same_file(a: OwnedFd, b: OwnedFd) -> bool:
    first = _file_id(a)
    return first is not None and first == _file_id(b)


def _since_record(
    logdir: LogDir,
    stem: str,
    meta: Mapping[str, Any],
    current: OwnedFd,
    *,
    size: int,
    max_files: int,
) -> list[tuple[OwnedFd, int, int]]:
    """Where what was written after the record is: ``(file, start, end)``, oldest first.

    Usually the current file (``size`` bytes) from the size the record gave
    it.  If the file the record describes has been rotated since (a crash
    came between a rotation and the record's next write), the rest of that
    file and every file after it, the current file last; the others are
    opened for reading, and the caller closes them.  A record of no file (an
    older daemon's), or of one that is gone, is taken to be the current file's.
    """
    # The recorded size is bounded by the file's: a record no daemon of ours
    # wrote had a negative one, an OverflowError from pread (the session lost).
    mine = [(current, _within(meta.get("size", size), size), size)]
    recorded = meta.get("file")
    if not isinstance(recorded, list) or recorded == _file_id(current):
        return mine
    found: list[tuple[OwnedFd, int, int]] = []
    try:
        for n in range(1, max(max_files, 2)):
            reader = logdir.open_existing(f"{stem}.log.{n}", os.O_RDONLY)
            if reader is None:
                break
            length = os.fstat(reader.fd).st_size
            if _file_id(reader) == recorded:
                found.append((reader, _within(meta.get("size", 0), length), length))
                found.reverse()  # oldest first
                return [*found, (current, 0, size)]
            found.append((reader, 0, length))
    except (OSError, LogFileError):
        pass
    for reader, _, _ in found:
        reader.close()
    return mine


class LogFile:
    """The log file of one session.

    Use :meth:`create` or :meth:`adopt`.

    Attributes:
        written_to: the stream offset up to which output has been written.
    """

    # One per session: slotted (a dict of its 17 fields was 300 bytes more).
    __slots__ = (
        "_at_line_start",
        "_dir",
        "_index",
        "_index_pending",
        "_index_size",
        "_last_time",
        "_owner",
        "file_id",
        "format",
        "keep_retired",
        "max_files",
        "max_size",
        "retired",
        "rotations",
        "size",
        "stem",
        "written_to",
    )

    def __init__(
        self,
        logdir: LogDir,
        stem: str,
        fmt: LogFormat,
        *,
        max_size: int,
        max_files: int,
        owner: OwnedFd | None,
        size: int,
        written_to: int,
        rotations: int = 0,
    ) -> None:
        self._dir = logdir
        self.stem = stem
        self.format = fmt
        self.max_size = max_size
        self.max_files = max(1, max_files)
        self._owner = owner
        self.size = size
        self.written_to = written_to
        self.rotations = rotations
        #: A raw file's sidecar, open for appending, and its size.
        self._index: OwnedFd | None = None
        self._index_size = 0
        #: The newest entry's time (a new one is due RESOLUTION later).
        self._last_time: int | None = None
        #: The last byte written was a newline.
        self._at_line_start = True
        #: An adopted file's sidecar is reopened when first needed (see adopt).
        self._index_pending = False
        #: Which file is being written (device and inode), for the record.
        self.file_id: list[int] | None = None if owner is None else _file_id(owner)
        #: Keep the files a rotation leaves in :attr:`retired` instead of
        #: closing them (a log writer hands them to the event loop, which may
        #: still have them in the fd store).
        self.keep_retired = False
        self.retired: list[OwnedFd] | None = None

    @classmethod
    def create(
        cls,
        logdir: LogDir,
        stem: str,
        fmt: LogFormat,
        *,
        max_size: int,
        max_files: int,
        written_to: int = 0,
    ) -> LogFile:
        """A fresh, empty log file.  Files a previous session of the name left
        (kept by ``rm --keep-logs``, or by a session the daemon forgot) are
        moved aside to ``STEM~1.log...``, as a previous generation's.

        Raises:
            LogFileError: it cannot be created; the message says why.
        """
        log = cls.unopened(
            logdir, stem, fmt, max_size=max_size, max_files=max_files, written_to=written_to
        )
        log.open_new()
        return log

    @classmethod
    def unopened(
        cls,
        logdir: LogDir,
        stem: str,
        fmt: LogFormat,
        *,
        max_size: int,
        max_files: int,
        written_to: int = 0,
    ) -> LogFile:
        """A fresh log file not created yet (no I/O): :meth:`open_new` creates it."""
        log = cls(
            logdir,
            file_stem(stem),
            fmt,
            max_size=max_size,
            max_files=max_files,
            owner=None,
            size=0,
            written_to=written_to,
        )
        # A raw file's sidecar is created with the first output (see _adopt_index):
        # on some disks creating a file costs most of a millisecond.
        log._index_pending = fmt is LogFormat.RAW
        return log

    def open_new(self) -> None:
        """Create the file of :meth:`unopened`, moving a previous session's files aside.

        Raises:
            LogFileError: it cannot be created; the message says why.
        """
        self._make_room(self._dir, self.stem, self.max_files)
        self._owner = self._dir.open_fresh(self.name)
        self.file_id = _file_id(self._owner)

    @classmethod
    def adopt(
        cls,
        logdir: LogDir,
        meta: Mapping[str, Any],
        owner: OwnedFd | None,
        *,
        writing: bool,
        handed_over: bool = False,
    ) -> LogFile:
        """The log file described by ``meta``, with the fd handed back (or reopened by name).

        Args:
            logdir: the log directory.
            meta: what :meth:`meta` said.
            owner: the file's fd, if it was handed over.
            writing: the session still runs; without ``owner``, reopen the file.
            handed_over: ``owner`` is the file being written (a reexec's
                predecessor quiesced before it sent it); not looked up by name
                (a thousand lookups were a tenth of a reexec's pause).

        Raises:
            LogFileError: it is gone and cannot be reopened.
        """
        stem = str(meta["stem"])
        if writing and not (handed_over and owner is not None):
            # The file by its name is the one being written.  The fd handed back
            # may be from before a rotation: the daemon rotated and died before
            # the service manager took the new file's fd (or before the record
            # said so: see _since_record).
            current = logdir.open_existing(stem + ".log", os.O_WRONLY | os.O_APPEND)
            if current is not None and owner is not None and _same_file(owner, current):
                current.close()
            elif current is not None:
                if owner is not None:
                    owner.close()
                owner = current
            # else the name is gone (a crash in the middle of a rename): the fd
            # handed back is all there is.
            if owner is None:
                raise LogFileError(f"log file {stem}.log is gone")
        size = 0 if owner is None else os.fstat(owner.fd).st_size
        fmt = LogFormat(meta.get("format", "raw"))
        max_files = int(meta.get("max_files", 2))
        written_to = int(meta.get("written_to", 0))
        rotations = int(meta.get("rotations", 0))
        if owner is not None:
            parts = _since_record(logdir, stem, meta, owner, size=size, max_files=max_files)
            rotations += len(parts) - 1
            if fmt is LogFormat.RAW:
                # Exact for raw files: every byte in them is one of the stream's.
                written_to = int(meta.get("base", 0)) + sum(end for _, _, end in parts)
            else:
                # Written past what the record says (a crash came before the
                # session's record was written again): the records since say how far.
                for reader, start, end in parts:
                    if start >= end:
                        continue
                    found = _cri_tail(reader, start, end)
                    if found is None:
                        break
                    written_to += found[0]
                    if reader is owner and found[1] < size:
                        # A record cut short: the ring has its bytes, written again whole.
                        os.ftruncate(owner.fd, found[1])
                        size = found[1]
            for reader, _, _ in parts[:-1]:
                reader.close()
        log = cls(
            logdir,
            stem,
            fmt,
            max_size=_within(meta.get("max_size", 0), MAX_RECORDED),
            max_files=max_files,
            owner=owner,
            size=size,
            written_to=written_to,
            rotations=rotations,
        )
        if fmt is LogFormat.RAW and writing and owner is not None:
            # Reopened with the first write, not now: a successor adopting a
            # thousand sessions would spend a third of its pause on sidecars.
            log._index_pending = True
        return log

    def _settle_index(self) -> None:
        if self._index_pending:
            self._index_pending = False
            self._adopt_index()

    def _adopt_index(self) -> None:
        """Reopen the sidecar of the file being written, and where it and the file stand.

        Creates it if there is none: a new file's, or one that was removed.
        """
        name = self.name + INDEX_SUFFIX
        try:
            reader = self._dir.open_existing(name, os.O_RDONLY)
            if reader is not None:
                with contextlib.closing(reader):
                    end = os.fstat(reader.fd).st_size // ENTRY.size * ENTRY.size
                    if end:
                        last = os.pread(reader.fd, ENTRY.size, end - ENTRY.size)
                        _, self._last_time = ENTRY.unpack(last)
                self._index = self._dir.open_existing(name, os.O_WRONLY | os.O_APPEND)
                self._index_size = end
            if self._index is None:
                # Gone: the times of what the file holds are lost, not those to come.
                self._index = self._dir.open_fresh(name)
            if self.size:
                log_reader = self._dir.open_existing(self.name, os.O_RDONLY)
                if log_reader is not None:
                    with contextlib.closing(log_reader):
                        self._at_line_start = os.pread(log_reader.fd, 1, self.size - 1) == b"\n"
        except (OSError, LogFileError, struct.error):
            pass  # times are extra: the file is written all the same

    def position(self) -> Position:
        """Where the file stands: what :meth:`meta` says, taken in one go (a
        writer thread takes it after each operation, for the event loop)."""
        return Position(
            self.stem,
            self.written_to,
            self.size,
            self.rotations,
            None if self.closed else self.file_id,
        )

    def meta(self, at: Position | None = None) -> dict[str, Any]:
        """What :meth:`adopt` needs to carry on with this file (as it stands ``at``)."""
        at = self.position() if at is None else at
        return {
            "stem": at.stem,
            "format": str(self.format),
            "max_size": self.max_size,
            "max_files": self.max_files,
            "rotations": at.rotations,
            "base": at.written_to - at.size if self.format is LogFormat.RAW else 0,
            "written_to": at.written_to,
            # The file's size that goes with written_to (a CRI file's records are
            # longer than the output they carry; see adopt).
            "size": at.size,
            # Which file that is (see adopt: a crash may come before the record
            # is written again after a rotation).
            "file": at.file,
        }

    @property
    def owner(self) -> OwnedFd:
        """The open file's owner (only while it is open for writing)."""
        assert self._owner is not None
        return self._owner

    @property
    def open_owner(self) -> OwnedFd | None:
        """The file being written, None if it is not open."""
        return None if self._owner is None or self._owner.closed else self._owner

    @property
    def directory(self) -> LogDir:
        return self._dir

    @property
    def closed(self) -> bool:
        """No longer written (the session ended); its files can still be read."""
        return self._owner is None or self._owner.closed

    @property
    def name(self) -> str:
        return self.stem + ".log"

    @property
    def path(self) -> str:
        return os.path.join(self._dir.path, self.name)

    def write(self, data: bytes, end: int, ns: int | None = None) -> bool:
        """Append one batch of output that ends at stream offset ``end``, read at
        ``ns`` (nanoseconds since the epoch; now if None).

        Returns:
            True if the file rotated (its metadata changed).

        Raises:
            OSError: the write failed; ``written_to`` says how far it got.
        """
        if self.format is LogFormat.CRI:
            rotated = self._write_records(cri.encode(data, ns))
            self.written_to = end
            return rotated
        self._settle_index()
        rotated = False
        view = memoryview(data)
        fd = self.owner.fd
        done = 0
        while view:
            used = self.size + self._index_size
            if self.max_size and self.size and used >= self.max_size:
                self._rotate()
                fd = self.owner.fd
                rotated = True
                used = 0
            room = len(view) if not self.max_size else max(1, self.max_size - used)
            try:
                n = os.write(fd, view[:room])
            except InterruptedError:
                continue
            self._date(data[done : done + n], ns)  # the whole of data, not a copy, as a rule
            # Counted as it goes: after a failure, written_to is exactly how far it got.
            self.size += n
            self.written_to += n
            done += n
            view = view[n:]
        return rotated

    def _date(self, written: bytes, ns: int | None) -> None:
        """Add a sidecar entry for bytes just written at ``self.size``, if one is due."""
        if self._index is None or not written:
            return
        # A file's first bytes are always dated: its older lines may be gone with older files.
        stamp = time.time_ns() if ns is None else ns
        when = entry_time(
            written, self._at_line_start, self._last_time, lambda: stamp, first=self.size == 0
        )
        self._at_line_start = written.endswith(b"\n")
        if when is None:
            return
        with contextlib.suppress(OSError):  # times are extra: the output is what counts
            os.write(self._index.fd, ENTRY.pack(self.size, when))
            self._index_size += ENTRY.size
            self._last_time = when

    def skip_to(self, offset: int) -> None:
        """Output up to ``offset`` is lost for this file (it was not written in time)."""
        self.written_to = offset

    def _write_records(self, records: bytes) -> bool:
        """Write whole CRI records, rotating between records at the size limit."""
        if not self.max_size:
            self._write_all(records)
            return False
        rotated = False
        view = memoryview(records)
        start = 0
        while start < len(records):
            room = self.max_size - self.size
            if len(records) - start <= room:
                self._write_all(view[start:])
                return rotated
            # The records that still fit, then a fresh file for the rest.
            cut = records.rfind(b"\n", start, start + max(room, 0)) + 1
            if cut > start:
                self._write_all(view[start:cut])
                start = cut
            if self.size:
                self._rotate()
                rotated = True
            elif cut <= start:
                # One record larger than the limit: it gets a file of its own.
                end = records.index(b"\n", start) + 1
                self._write_all(view[start:end])
                start = end
        return rotated

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        fd = self.owner.fd
        while view:
            try:
                n = os.write(fd, view)
            except InterruptedError:
                continue
            view = view[n:]
            self.size += n

    def _files(self) -> list[str]:
        """Every file name of this log, oldest first."""
        return [f"{self.name}.{n}" for n in range(self.max_files - 1, 0, -1)] + [self.name]

    def _all_files(self) -> list[str]:
        """Every file name of this log and of its sidecars, oldest first, each file then its own."""
        return [name for log in self._files() for name in (log, log + INDEX_SUFFIX)]

    def _rotate(self) -> None:
        names = self._files()
        if len(names) > 1:
            for older, newer in itertools.pairwise(names):
                for suffix in ("", INDEX_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        self._dir.rename(newer + suffix, older + suffix)
        fresh = self._dir.open_fresh(self.name)
        if self.keep_retired:
            self.retired = [*(self.retired or ()), self.owner]
        else:
            self.owner.close()
        self._owner = fresh
        self.file_id = _file_id(fresh)
        self.size = 0
        self.rotations += 1
        if self._index is not None:
            self._index.close()
            self._index = None
            self._index_size = 0
            with contextlib.suppress(LogFileError):
                self._index = self._dir.open_fresh(self.name + INDEX_SUFFIX)

    @classmethod
    def _make_room(cls, logdir: LogDir, stem: str, max_files: int) -> None:
        """Clear the names of log ``stem``: files a previous session left there
        are moved aside, as a previous generation's; links or other things
        planted there are removed (never followed)."""
        previous = cls(
            logdir,
            stem,
            LogFormat.RAW,  # every name, sidecars too
            max_size=0,
            max_files=max(max_files, 2),
            owner=None,
            size=0,
            written_to=0,
        )
        if any(logdir.is_file(name) for name in previous._all_files()):
            previous.move_aside()
        else:
            previous.remove_files()

    def rename(self, stem: str) -> None:
        """Follow a session rename; the open fds keep writing to the moved files.

        Files a forgotten session left at the new names are moved aside first:
        they would otherwise be replaced, or read as older parts of this log.
        """
        stem = file_stem(stem)
        if stem == self.stem:
            return
        self._make_room(self._dir, stem, self.max_files)
        old = self._all_files()
        self.stem = stem
        for before, after in zip(old, self._all_files(), strict=True):
            with contextlib.suppress(FileNotFoundError):
                self._dir.rename(before, after)

    def move_aside(self) -> str:
        """Rename this log's files to ``STEM~1.log...`` (a previous generation's), replacing
        older ones; returns the new path of the current file.

        '~' never occurs in a session name, so the names cannot meet a session's.
        """
        aside = LogFile(
            self._dir,
            file_stem(self.stem + "~1"),
            self.format,
            max_size=self.max_size,
            max_files=self.max_files,
            owner=None,
            size=0,
            written_to=0,
        )
        aside.remove_files()
        for before, after in zip(self._all_files(), aside._all_files(), strict=True):
            with contextlib.suppress(FileNotFoundError):
                self._dir.rename(before, after)
        return aside.path

    def remove_files(self) -> None:
        """Delete every file of this log, sidecars too (``rm`` without ``--keep-logs``)."""
        for name in self._all_files():
            self._dir.remove(name)

    def snapshot(self) -> LogSnapshot:
        """Open what has been written so far for reading (the oldest file first).

        Raises:
            LogFileError: a file cannot be opened, or is not a regular file.
        """
        parts: list[LogPart] = []
        try:
            for name in self._files():
                owner = self._dir.open_existing(name, os.O_RDONLY)
                if owner is None:
                    continue
                path = os.path.join(self._dir.path, name)
                parts.append(LogPart(owner, os.fstat(owner.fd).st_size, path))
                if self.format is LogFormat.RAW:
                    parts[-1].index = self._dir.open_existing(name + INDEX_SUFFIX, os.O_RDONLY)
        except BaseException:
            for part in parts:
                part.close()
            raise
        return LogSnapshot(parts, self.format, self.written_to)

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
        if self._index is not None:
            self._index.close()
