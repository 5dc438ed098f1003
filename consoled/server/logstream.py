"""The ``logs`` stream: a session's log files or scrollback, filtered here, then live output.

Everything ``logs`` asks for is done in the daemon, so that ``--tail 10`` of
a 50 MB log sends ten lines, not 50 MB: the tail is found by reading the
ring, then the files, backwards from their end; ``--since``/``--until`` and
``--timestamps`` are applied by :class:`~.loglines.LineFilter` to lines whose
times come from the ring's time index, a raw file's sidecar, or a CRI
file's records.  A log file wholly older than ``--since`` is not read.

The files are snapshotted, and the follower registered, in one synchronous
step, so the files, then the ring, then live output are one contiguous
stream, exactly as the unfiltered stream is.

Every ``output`` says where the stream stands, so that a client whose
connection breaks (a crash, or a reexec that could not wait for a slow
reader) goes on from there with a daemon that never saw it: a
:class:`FileCursor` while the files are sent (a file's identity and a
position in it, which a rotation does not change), the stream offset after.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import math
import os
import re
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import structlog
import trio

from ..io.fds import OwnedFd
from ..io.record import Record
from ..io.timeindex import TimeIndex, decode
from ..protocol import MAX_DATA_CHUNK, ErrorCode
from ..protocol import events as ev
from .channel import Channel
from .cri import CriDecoder, CriFormatError, decode_record, parse_timestamp
from .errors import RequestError
from .logfile import LogFileError, LogFormat, LogPart, LogSnapshot
from .loglines import UNKNOWN_TIME, LineFilter, TailFinder
from .session import Session
from .streams import StreamContext
from .subscriber import Subscriber

log = structlog.get_logger("consoled.stream")

#: Read size when streaming a log file.
FILE_CHUNK: Final = 256 * 1024
#: Seconds one read of a log file may take; then the stream ends, naming the file.
READ_TIMEOUT: Final = 10.0
#: Reads of log files under way at once, for all streams.  Each runs in a
#: thread: a disk that stops answering (an NFS server gone, a dying disk)
#: holds that thread, and the stream that asked, never the event loop.
READERS: Final = 16
_readers: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("log_readers")

T = TypeVar("T")


async def on_disk(path: str, work: Callable[[], T]) -> T:
    """``work()``, file I/O on ``path``, in a thread.

    Raises:
        LogFileError: it failed, or did not return within :data:`READ_TIMEOUT`
            (its thread is left to the kernel; the read has no effect).
    """
    try:
        limiter = _readers.get()
    except LookupError:
        limiter = trio.CapacityLimiter(READERS)
        _readers.set(limiter)
    try:
        with trio.fail_after(READ_TIMEOUT):
            return await trio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
    except trio.TooSlowError:
        raise LogFileError(
            f"reading {path}: no answer in {READ_TIMEOUT:g} s (a hung disk?)"
        ) from None
    except OSError as exc:
        raise LogFileError(f"reading {path}: {exc.strerror}") from None


#: How much ``--timestamps`` can make of one byte of output: a line of a
#: newline alone, stamped (``UNKNOWN_TIME`` is as long as any time).
STAMPED_GROWTH: Final = len(UNKNOWN_TIME) + 2


def _no_time(index: int) -> None:
    return None


def _input_size(lines: LineFilter) -> int:
    """How much output to read for one message: what it makes must fit one
    ``output`` (MAX_DATA_CHUNK), so that every message says where the stream
    stands (a client cut off after the first of several would get it again)."""
    return min(FILE_CHUNK, MAX_DATA_CHUNK // STAMPED_GROWTH if lines.timestamps else MAX_DATA_CHUNK)


#: ``_IOR('v', 1, long)``: an inode's generation, which changes when its number is reused.
FS_IOC_GETVERSION: Final = 0x80087601
#: Bytes at the start of a log file that go into its identity (a CRI file's
#: first record has its time in nanoseconds).
HEAD_SIZE: Final = 64

_CURSOR: Final = re.compile(r"f([0-9a-f]{16})\.([0-9]+)\.([0-9]+)\.([01])([01])([01])")


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells a log file from every other, renamed or not.

    The device and inode number, which a rotation (a rename) keeps; but a
    rotation also deletes the oldest file, and a new one may get its inode
    number, so the inode's generation goes along where the file system has
    one (ext4, XFS, btrfs; 0 on tmpfs), and a checksum of the file's first
    bytes (how many: ``head``, at most :data:`HEAD_SIZE`).
    """

    dev: int
    ino: int
    generation: int
    head: int
    checksum: int

    @classmethod
    def of(cls, part: LogPart, head: int | None = None) -> FileIdentity:
        """The identity of ``part``, its checksum over ``head`` bytes (as many as
        it has up to HEAD_SIZE if None)."""
        fd = part.owner.fd
        st = os.fstat(fd)
        try:
            packed = fcntl.ioctl(fd, FS_IOC_GETVERSION, b"\0" * 8)
            generation = struct.unpack("l", packed)[0] & 0xFFFFFFFF
        except OSError:
            generation = 0
        if head is None:
            head = min(part.size, HEAD_SIZE)
        # A file shorter than ``head`` is another file: its checksum differs.
        checksum = zlib.crc32(os.pread(fd, head, 0) if head else b"")
        return cls(st.st_dev, st.st_ino, generation, head, checksum)

    def digest(self) -> str:
        """The identity as a cursor carries it: hashed, so that no client learns
        inode numbers and generations (NFS builds file handles from them)."""
        text = f"{self.dev}.{self.ino}.{self.generation}.{self.head}.{self.checksum}"
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class FileCursor:
    """A place in a session's log files: ``output.cursor`` and ``logs.cursor``.

    The file is named by its identity's digest and the length of the head
    it was taken over; ``position`` is a byte of the file where a record
    (CRI) or any byte (raw) starts.  The line filter's state goes along:
    whether that byte starts a line, whether the line it is in is being
    shown, and whether a line past ``until`` was seen (nothing more is shown).
    """

    digest: str
    head: int
    position: int
    at_line_start: bool
    keeping: bool
    done: bool

    @classmethod
    def at(cls, file: FileIdentity, position: int, lines: LineFilter) -> FileCursor:
        return cls(
            file.digest(), file.head, position, lines.at_line_start, lines.keeping, lines.done
        )

    def encode(self) -> str:
        flags = f"{int(self.at_line_start)}{int(self.keeping)}{int(self.done)}"
        return f"f{self.digest}.{self.head}.{self.position}.{flags}"

    def names(self, part: LogPart) -> bool:
        """Whether the cursor is in ``part``."""
        return FileIdentity.of(part, self.head).digest() == self.digest

    @classmethod
    def parse(cls, text: str) -> FileCursor:
        """Raises: RequestError: not a cursor this daemon makes."""
        found = _CURSOR.fullmatch(text)
        if found is None or int(found.group(2)) > HEAD_SIZE:
            raise RequestError(
                ErrorCode.INVALID_ARGUMENT,
                f"{text[:80]!r} is not a log cursor (from output.cursor)",
            )
        digest, head, position = found.group(1), int(found.group(2)), int(found.group(3))
        line_start, keeping, done = (flag == "1" for flag in found.groups()[3:])
        return cls(digest, head, position, line_start, keeping, done)


async def _open_files(session: Session, request: ev.Logs) -> LogSnapshot | None:
    """The session's log files, open for reading; None to read its ring alone."""
    log_file = session.log_file
    if log_file is None or log_file.lost or request.resume is not None:
        return None
    try:
        snapshot = await log_file.snapshot()
    except LogFileError as exc:
        # A file we cannot read (something planted in the directory): the ring will do.
        log.error("logfile.unreadable", session=str(session.name), error=str(exc))
        return None
    if snapshot is None:
        why = "its writer is stuck (a stalled disk?): the ring alone is sent"
        log.warning("logfile.not_answering", session=str(session.name), path=log_file.path, why=why)
    return snapshot


async def stream_logs(channel: Channel, context: StreamContext, request: ev.Logs) -> None:
    """Send a session's log files (or scrollback), filtered, then follow it if asked."""
    session = context.session_for_stream(request.session, request.uid)
    if request.resume is not None and request.resume < 0:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, "resume must be an offset >= 0")
    if request.tail is not None and request.tail < 0:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, "tail must be a number of lines >= 0")
    cursor = None if request.cursor is None else FileCursor.parse(request.cursor)
    if cursor is not None and request.resume is not None:
        raise RequestError(ErrorCode.INVALID_ARGUMENT, "resume and cursor cannot both be given")
    lines = LineFilter(since=request.since, until=request.until, timestamps=request.timestamps)
    session.caught_up()  # all the output read so far, before the files are looked at
    # The files are opened by their writer thread, after what is queued for them.
    snapshot = await _open_files(session, request)
    if context.table.lookup(session.name) is not session:  # removed meanwhile
        if snapshot is not None:
            snapshot.close()
        raise RequestError(ErrorCode.UNKNOWN_SESSION, f"session {session.name} was removed")
    follow = request.follow and (
        session.state is not ev.SessionState.EXITED or request.resume is not None
    )
    deadline = math.inf
    if request.until is not None:
        # Following ends once the time is past: nothing later would be shown.
        left = (request.until - time.time_ns()) / 1e9
        follow = follow and left > 0
        deadline = trio.current_time() + max(left, 0.0)
    record = session.record
    sub = Subscriber(
        context.config.client_queue, read_only=True, label="logs", follower=True, raw=True
    )
    if cursor is not None and snapshot is None:
        raise RequestError(
            ErrorCode.INVALID_ARGUMENT,
            f"session {session.name} has no log files to resume a cursor in",
        )
    try:
        # Read from the files first: the rest is synchronous up to the
        # follower's registration, so that the files (and the ring from where
        # they end) hold exactly the output up to that moment.
        place = None
        if cursor is not None:
            assert snapshot is not None
            place = await _unless_unreadable(session, _find(snapshot, cursor))
        finder: TailFinder | None = None
        start: tuple[int, int] = (0, 0)  # the file, and the byte in it, the files start from
        gap = False
        if cursor is not None:
            if place is None:
                gap = True  # rotated away (or cut short): the oldest file kept is next
            else:
                start = place
                lines.at_line_start, lines.keeping = cursor.at_line_start, cursor.keeping
                lines.done = cursor.done
        if request.resume is not None:
            first = request.resume
            lines.at_line_start = record.ends_line_before(max(first, record.start))
            if not lines.at_line_start and not lines.passthrough:
                _resume_in_line(lines, record, first)
        elif snapshot is not None:
            first = snapshot.written_to  # the files, then whatever they lack from the ring
        else:
            first = record.start
        if request.tail is not None and request.resume is None and cursor is None:
            finder = TailFinder(request.tail)
            found = _tail_in_ring(finder, record, first)
            if found is not None:
                first = found
                if snapshot is not None:
                    snapshot.close()  # the tail is all in the ring
                    snapshot = None
        if follow:
            session.attach(sub, replay=None, resume=first, nudge=False)
        else:
            sub.offset, chunks = record.read_from(first)
            sub.preload(chunks)
            if session.state is ev.SessionState.EXITED:
                sub.end(ev.EndReason.EXITED, f"session {session.name} ended")
            else:
                sub.end(ev.EndReason.END_OF_LOG, "")
        with context.table.track_stream():
            stream = _logs_stream(
                channel,
                session,
                sub,
                snapshot,
                lines=lines,
                finder=finder,
                start=start,
                gap=gap,
                deadline=deadline,
                resumed=request.resume is not None or cursor is not None,
                follow=follow,
            )
            await _unless_unreadable(session, stream)
    finally:
        if snapshot is not None:
            snapshot.close()


async def _unless_unreadable(session: Session, work: Awaitable[T]) -> T:
    """Await ``work``; a log file it cannot read ends the request, saying which and why."""
    try:
        return await work
    except LogFileError as exc:
        log.error("logfile.unreadable", session=str(session.name), error=str(exc))
        raise RequestError(ErrorCode.INTERNAL, str(exc)) from None


def _resume_in_line(lines: LineFilter, record: Record, offset: int) -> None:
    """Set ``lines`` for a stream resumed at ``offset``, in the middle of a line:
    it goes on showing the line, or leaving it out, or it has ended (the line
    is past ``until``), as the stream it resumes did, by the time of the
    line's first byte."""
    start, chunks = record.read_from(record.start)
    before = b"".join(chunks)[: max(offset - start, 0)]
    newline = before.rfind(b"\n")
    when = None if newline < 0 else record.time_at(start + newline + 1)
    lines.keeping = lines.since is None or (when is not None and when >= lines.since)
    lines.done = lines.until is not None and when is not None and when > lines.until


async def _find(snapshot: LogSnapshot, cursor: FileCursor) -> tuple[int, int] | None:
    """The file of ``snapshot`` a cursor is in, and its position; None if it is gone."""
    for i, part in enumerate(snapshot.parts):
        if await on_disk(part.path, functools.partial(cursor.names, part)):
            return (i, cursor.position) if cursor.position <= part.size else None
    return None


def _tail_in_ring(finder: TailFinder, record: Record, first: int) -> int | None:
    """The stream offset where the tail starts, if the ring holds all of it from ``first``."""
    start, chunks = record.read_from(first)
    end = start + sum(map(len, chunks))
    for chunk in reversed(chunks):
        end -= len(chunk)
        found = finder.back(chunk)
        if found is not None:
            return end + found
    return None


async def _logs_stream(
    channel: Channel,
    session: Session,
    sub: Subscriber,
    snapshot: LogSnapshot | None,
    *,
    lines: LineFilter,
    finder: TailFinder | None,
    start: tuple[int, int],
    gap: bool,
    deadline: float,
    resumed: bool,
    follow: bool,
) -> None:
    if resumed:
        log.info("client.following", session=str(session.name), resumed=True, offset=sub.offset)
    try:
        await channel.send(
            ev.Attached(
                str(session.name),
                session.state,
                0,
                0,
                0,
                offset=sub.offset,
                uid=session.uid,
                gap=gap,
            )
        )
        if snapshot is not None:
            await _send_files(channel, snapshot, lines, finder, start)
        # From here on each output says where it stands in the session's
        # output (see ev.Output.offset): a client that loses us (a crash, or
        # a reexec that could not wait for it) goes on from there.  The files
        # were everything before it.
        await channel.send(ev.Output(b"", offset=sub.offset))
        async with trio.open_nursery() as nursery:

            async def watch_client() -> None:
                # A logs client sends nothing but `detach`; EOF means it left.
                while True:
                    event = await channel.receive()
                    if event is None or isinstance(event, ev.Detach):
                        sub.end(ev.EndReason.DETACHED, "detached")
                        return

            nursery.start_soon(watch_client)
            await _pump_logs(channel, session, sub, lines, deadline, follow=follow)
            nursery.cancel_scope.cancel()
    finally:
        session.detach(sub)


async def _send(
    channel: Channel, data: bytes, offset: int | None = None, cursor: FileCursor | None = None
) -> None:
    """Send ``data``; the last message says ``offset`` or ``cursor`` (the others
    cannot: see ev.Output).  Data comes in pieces small enough for one message
    (see _input_size) but for a CRI record longer than that, stamped."""
    last = max(len(data) - 1, 0) // MAX_DATA_CHUNK * MAX_DATA_CHUNK
    for start in range(0, max(len(data), 1), MAX_DATA_CHUNK):
        piece = data[start : start + MAX_DATA_CHUNK]
        if start == last:
            where = None if cursor is None else cursor.encode()
            await channel.send(ev.Output(piece, offset=offset, cursor=where))
        else:
            await channel.send(ev.Output(piece))


async def _pump_logs(
    channel: Channel,
    session: Session,
    sub: Subscriber,
    lines: LineFilter,
    deadline: float,
    *,
    follow: bool,
) -> None:
    """Send the ring's and the live output through the filter, then the ``ended`` notice."""
    record = session.record
    passed = False
    while True:
        if not passed:
            with trio.move_on_at(deadline) as timer:
                await sub.wait_output()
            passed = timer.cancelled_caught
        offset = sub.offset
        chunks = sub.take(MAX_DATA_CHUNK)
        if chunks:
            # Each message says the offset it reaches, and is one message
            # (see _input_size; the ring's replay comes in chunks of megabytes).
            most = _input_size(lines)
            out: list[bytes] = []
            size = 0
            for chunk in chunks:
                assert isinstance(chunk, bytes)  # a raw subscriber: never framed
                for start in range(0, len(chunk), most):
                    piece = chunk if len(chunk) <= most else chunk[start : start + most]
                    if size + len(piece) > most:
                        await _send(channel, b"".join(out), offset)
                        out.clear()
                        size = 0
                    base = offset
                    out.append(lines.feed(piece, lambda i: record.time_at(base + i)))  # noqa: B023
                    offset += len(piece)
                    size += len(piece)
            if size:
                await _send(channel, b"".join(out), offset)
            if not lines.done:
                continue
        notice = sub.end_notice
        if lines.done or (passed and notice is None):
            # --until: nothing later can be shown.
            session.detach(sub)
            await channel.send(ev.Ended(ev.EndReason.END_OF_LOG, "", session=str(session.name)))
            return
        assert notice is not None  # woken with nothing queued: the stream ended
        session.detach(sub)
        name = str(session.name)
        if notice.reason is ev.EndReason.RESTARTING:
            ended = ev.Ended(notice.reason, notice.message, resume=sub.offset, session=name)
        else:
            ended = ev.Ended(
                notice.reason, notice.message, exit_code=notice.exit_code, session=name
            )
        await channel.send(ended)
        return


# --- the files ---------------------------------------------------------------------------


async def _send_files(
    channel: Channel,
    snapshot: LogSnapshot,
    lines: LineFilter,
    finder: TailFinder | None,
    start_at: tuple[int, int],
) -> None:
    parts = snapshot.parts
    try:
        first, offset = start_at
        if finder is not None:
            first, offset = await _tail_in_files(snapshot, finder)
        for i in range(first, len(parts)):
            start = offset if i == first else 0
            if snapshot.format is LogFormat.CRI:
                await _send_cri(channel, parts[i], start, lines)
            else:
                await _send_raw(channel, parts[i], start, lines)
            if lines.done:
                return
    except CriFormatError as exc:
        log.error("logfile.corrupt", error=str(exc))


async def _tail_in_files(snapshot: LogSnapshot, finder: TailFinder) -> tuple[int, int]:
    """The file and offset where the tail starts (the ring held less than all of it)."""
    for i in range(len(snapshot.parts) - 1, -1, -1):
        part = snapshot.parts[i]
        if snapshot.format is LogFormat.CRI:
            found = await _tail_in_cri(part, finder)
        else:
            found = await _tail_in_raw(part, finder)
        if found is not None:
            return i, found
    return 0, 0


async def _read(part: LogPart, size: int, offset: int, owner: OwnedFd | None = None) -> bytes:
    """``size`` bytes of ``part`` (or of its ``owner``, the sidecar) from ``offset``."""
    fd = (part.owner if owner is None else owner).fd
    return await on_disk(part.path, functools.partial(os.pread, fd, size, offset))


async def _tail_in_raw(part: LogPart, finder: TailFinder) -> int | None:
    end = part.size
    while end > 0:
        start = max(0, end - FILE_CHUNK)
        data = await _read(part, end - start, start)
        found = finder.back(data)
        if found is not None:
            return start + found
        end = start
    return None


async def _tail_in_cri(part: LogPart, finder: TailFinder) -> int | None:
    """Where the tail starts in a CRI file: just after the record that ends the line before it."""
    pos = part.size
    pending = b""  # the bytes from pos on not yet taken apart: a record cut by the chunk
    newest = True
    while pos > 0 or pending:
        if pos > 0:
            start = max(0, pos - FILE_CHUNK)
            pending = await _read(part, pos - start, start) + pending
            pos = start
            if newest:
                newest = False
                pending = pending[: pending.rfind(b"\n") + 1]  # a record cut by a crash: not one
        if pos > 0:
            cut = pending.find(b"\n") + 1  # what comes before may be the end of a record
            if not cut:
                continue
            whole, pending = pending[cut:], pending[:cut]
            base = pos + cut
        else:
            whole, pending, base = pending, b"", 0
        end = base + len(whole)
        for record in reversed(whole.split(b"\n")[:-1]):
            _, _, tag, _ = decode_record(record)
            if finder.back_record(tag == b"F"):
                return end
            end -= len(record) + 1
        await trio.lowlevel.checkpoint()
    return None


async def _sidecar(part: LogPart) -> TimeIndex | None:
    """A raw file's times (file offset to time), from its sidecar if it has one."""
    index = part.index
    if index is None:
        return None
    size = await on_disk(part.path, lambda: os.fstat(index.fd).st_size)
    return decode(await _read(part, size, 0, index), part.size)


async def _ends_line(part: LogPart) -> bool:
    return part.size == 0 or await _read(part, 1, part.size - 1) == b"\n"


async def _identity(part: LogPart) -> FileIdentity:
    return await on_disk(part.path, functools.partial(FileIdentity.of, part))


async def _send_raw(channel: Channel, part: LogPart, start: int, lines: LineFilter) -> None:
    times = None if lines.passthrough else await _sidecar(part)
    if times is not None and lines.since is not None:
        newest = times.last_time
        if newest is not None and newest < lines.since:
            lines.skip(await _ends_line(part))  # every line that starts in it is too old
            return
    identity = await _identity(part)
    offset = start
    while offset < part.size:
        data = await _read(part, min(_input_size(lines), part.size - offset), offset)
        if not data:
            return
        if times is None:
            out = lines.feed(data, _no_time)
        else:
            base = offset
            out = lines.feed(data, lambda i: times.time_at(base + i))  # noqa: B023
        offset += len(data)
        if out:
            place = FileCursor.at(identity, offset, lines)
            await _send(channel, out, cursor=place)
        if lines.done:
            return


async def _send_cri(channel: Channel, part: LogPart, start: int, lines: LineFilter) -> None:
    decoder = CriDecoder()
    identity = await _identity(part)
    offset = start
    if lines.since is not None:
        last = await _cri_last_record(part)
        if last is None or parse_timestamp(last[0]) < lines.since:
            lines.skip(last is None or last[2] == b"F")  # every line that starts in it is too old
            return
    while offset < part.size:
        data = await _read(part, min(_input_size(lines), part.size - offset), offset)
        if not data:
            return
        offset += len(data)
        if lines.passthrough:
            out = decoder.feed(data)
        else:
            # Records of one batch share a timestamp: each run of them is fed at once.
            pieces: list[bytes] = []
            runs: list[tuple[bytes, list[bytes]]] = []
            for stamp, logged in decoder.feed_records(data):
                if runs and runs[-1][0] == stamp:
                    runs[-1][1].append(logged)
                else:
                    runs.append((stamp, [logged]))
            for stamp, logged_run in runs:
                when = parse_timestamp(stamp)
                pieces.append(lines.feed(b"".join(logged_run), lambda i: when))  # noqa: B023
                if lines.done:
                    break
            out = b"".join(pieces)
        if out:
            end = offset - decoder.pending
            await _send(channel, out, cursor=FileCursor.at(identity, end, lines))
        if lines.done:
            return


async def _cri_last_record(part: LogPart) -> tuple[bytes, bytes, bytes, bytes] | None:
    """The last whole record of a CRI file (None if it has none)."""
    end = part.size
    pending = b""
    while end > 0:
        start = max(0, end - 4096)
        pending = await _read(part, end - start, start) + pending
        end = start
        last = pending.rfind(b"\n")
        if last < 0:
            continue
        before = pending.rfind(b"\n", 0, last)
        if before >= 0 or start == 0:
            return decode_record(pending[before + 1 : last])
    return None
