"""Per-session log files: every byte read from a master, written as it is read.

Files live flat in the log directory as ``ID.log`` and ``ID@EXEC.log`` ('@'
never occurs in a name).  They are created 0600 relative to a directory fd,
after unlinking whatever was at that name, with ``O_EXCL | O_NOFOLLOW``: a
symlink or hard link planted there is replaced, never followed or truncated.
Rotation keeps one older file, ``NAME.log.1``, as conmon does.

Writes are synchronous on purpose: the reader writes each batch before it
reads the next, so the file is complete however loaded the daemon is (a slow
disk slows the container's output, as with conmon, rather than losing it).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
from dataclasses import dataclass
from typing import Final

from . import cri

_OPEN_TRIES: Final = 5


class LogFormat(enum.StrEnum):
    RAW = "raw"
    CRI = "cri"


class LogFileError(Exception):
    pass


def open_log_dir(path: str | os.PathLike[str]) -> int:
    """Create (0700) and open the log directory; return its fd."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_fresh(dir_fd: int, name: str) -> int:
    for _ in range(_OPEN_TRIES):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        try:
            return os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND,
                0o600,
                dir_fd=dir_fd,
            )
        except FileExistsError:
            continue  # someone raced us to the name; unlink again
    raise LogFileError(f"cannot create log file {name!r}: something keeps recreating it")


@dataclass(slots=True)
class LogSnapshot:
    """Read-only fds on a session's log files, and how much of each to read."""

    parts: list[tuple[int, int]]  # (fd, size), oldest first
    format: LogFormat

    def close(self) -> None:
        for fd, _ in self.parts:
            os.close(fd)
        self.parts.clear()


class LogFile:
    """The log file of one session.

    Args:
        dir_fd: the log directory (not owned).
        dir_path: the log directory's path, for display.
        stem: the session's file stem (``ID`` or ``ID@EXEC``).
        fmt: raw bytes or CRI records.
        max_size: rotate past this many bytes; 0 never rotates.
    """

    def __init__(
        self, dir_fd: int, dir_path: str, stem: str, fmt: LogFormat, max_size: int
    ) -> None:
        self._dir_fd = dir_fd
        self._dir_path = dir_path
        self.name = stem + ".log"
        self.format = fmt
        self.max_size = max_size
        self._fd = _open_fresh(dir_fd, self.name)
        self.size = 0
        self.rotations = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name + ".1", dir_fd=dir_fd)  # a previous session's

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def write(self, data: bytes) -> None:
        """Append one batch of output."""
        if self._fd < 0:
            return
        if self.format is LogFormat.CRI:
            self._write_records(cri.encode(data))
            return
        view = memoryview(data)
        while view:
            if self.max_size and self.size >= self.max_size:
                self._rotate()
            room = len(view) if not self.max_size else self.max_size - self.size
            self._write_all(view[:room])
            view = view[room:]

    def _write_records(self, records: bytes) -> None:
        """Write whole CRI records, rotating between records at the size limit."""
        if not self.max_size:
            self._write_all(records)
            return
        view = memoryview(records)
        start = 0
        while start < len(records):
            room = self.max_size - self.size
            if len(records) - start <= room:
                self._write_all(view[start:])
                return
            # The records that still fit, then a fresh file for the rest.
            cut = records.rfind(b"\n", start, start + max(room, 0)) + 1
            if cut > start:
                self._write_all(view[start:cut])
                start = cut
            if self.size:
                self._rotate()
            elif cut <= start:
                # One record larger than the limit: it gets a file of its own.
                end = records.index(b"\n", start) + 1
                self._write_all(view[start:end])
                start = end

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            view = view[n:]
            self.size += n

    def _rotate(self) -> None:
        os.rename(self.name, self.name + ".1", src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.close(self._fd)
        self._fd = -1
        self._fd = _open_fresh(self._dir_fd, self.name)
        self.size = 0
        self.rotations += 1

    def rename(self, stem: str) -> None:
        """Follow a session rename; the open fd keeps writing to the moved file."""
        new = stem + ".log"
        for suffix in ("", ".1"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(
                    self.name + suffix,
                    new + suffix,
                    src_dir_fd=self._dir_fd,
                    dst_dir_fd=self._dir_fd,
                )
        self.name = new

    def snapshot(self) -> LogSnapshot:
        """Open what has been written so far for reading (the rotated file first)."""
        parts: list[tuple[int, int]] = []
        try:
            for name in (self.name + ".1", self.name):
                try:
                    fd = os.open(
                        name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd
                    )
                except FileNotFoundError:
                    continue
                parts.append((fd, os.fstat(fd).st_size))
        except OSError as exc:
            for fd, _ in parts:
                os.close(fd)
            raise LogFileError(f"cannot read log file {self.name!r}: {exc.strerror}") from None
        return LogSnapshot(parts, self.format)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as exc:  # pragma: no cover - close(2) of a regular file
                if exc.errno != errno.EINTR:
                    raise

    @property
    def path(self) -> str:
        return os.path.join(self._dir_path, self.name)
