"""Session log files written off the event loop: a stalled disk holds only its files.

The daemon drains every console on the machine from one event loop.  A log
file's ``write(2)`` may block for as long as its disk likes: an NFS hard
mount whose server went away, a dying disk, dirty-page throttling, a file
system frozen for a snapshot (``fsfreeze``).  Written on the event loop, one
such write held every console and every client.  Here every I/O on a
session's log file (creating it, writing, rotating, renaming, moving aside,
removing, closing, opening it for ``logs``) is an operation queued on its
:class:`LogWriter` and run, in order, by one of a few writer threads
(:class:`LogWriters`); the event loop only queues and never waits for one.

- **Order and completeness.**  A session's operations run one at a time, in
  the order queued.  The output queued for one file is bounded
  (:data:`MAX_QUEUED`): past it the session's reader waits for its writer
  before it reads more (:meth:`LogWriter.wait_room`), so a disk that is only
  slow paces the container, as a synchronous write did, and the file stays
  complete.
- **A stalled disk.**  A reader that waited :data:`STALL_TIMEOUT` for its
  writer goes on without it: the file is *stalled* (``logfile.stalled``), the
  output queued for it is dropped, and the session drains into its ring as if
  it had no file.  When the stuck operation returns, the file catches up from
  the ring (a gap, ``logfile.gap``, if the ring no longer holds it all).
  Threads stuck in a system call do not hold the others up (see
  :mod:`.logpool`, which also orders the operations of different files on
  the same names).
- **A failing disk** (ENOSPC, EIO): the write's error is logged once
  (``logfile.write_failed``), output is not queued for the file, and every
  :data:`RETRY_INTERVAL` the file catches up from the ring
  (``logfile.writing_again`` when it does).
- **The fd store and the record.**  A file a rotation replaces is handed to
  the event loop, which stores the new one with the service manager first and
  only then closes the old.  The record is written with what the writer last
  finished (:meth:`LogWriter.meta`).

Without a trio run (a restore outside one, in tests) the operations run where
they are queued.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import structlog
import trio

from ..io.fds import OwnedFd
from ..io.record import Record
from .logfile import LogFile, LogFileError, LogSnapshot, file_stem
from .logpool import LogWriters, News, OpQueue

log = structlog.get_logger("consoled.logwriter")

#: Bytes of output queued for one file before its session's reader waits.
MAX_QUEUED: Final = 256 * 1024
#: Seconds a reader waits for its file's writer before it goes on without the file.
STALL_TIMEOUT: Final = 1.0
#: Seconds between attempts to write a file again after a write failed.
RETRY_INTERVAL: Final = 5.0
#: Bytes of output queued that wake a writer thread at once (less waits for
#: one to look: see :mod:`.logpool`).
URGENT_BYTES: Final = 128 * 1024
#: Output queued after a write operation not started yet joins it (one thread
#: wake-up for a burst of echoes), up to this many bytes.
MERGE_BYTES: Final = 64 * 1024


class _State(enum.Enum):
    #: Output is queued as it comes.
    WRITING = "writing"
    #: A write failed: output is not queued; the file catches up every RETRY_INTERVAL.
    FAILED = "failed"
    #: Its writer did not answer in time: output is not queued until it does.
    STALLED = "stalled"


class _Write:
    """An operation: output for the file, one or more batches as they were read."""

    __slots__ = ("dropped", "pieces", "size")

    def __init__(self, data: bytes, end: int, ns: int | None) -> None:
        #: Each batch, the stream offset it ends at, and when it was read.
        self.pieces = [(data, end, ns)]
        self.size = len(data)
        #: Not to be written after all (it stays queued: see LogWriter._drop_writes).
        self.dropped = False


#: An operation: output to write, or a callable the writer thread runs with the file.
_Op = _Write | Callable[[LogFile], object]


class LogOwner(Protocol):
    """The session a log file is written for."""

    @property
    def name(self) -> object:
        """Its name (for log events)."""

    def log_replaced(self, owner: OwnedFd) -> None:
        """Its log writer opened a new file (the first, or a rotation's)."""


class LogWriter(OpQueue):
    """The event loop's handle on one session's log file, and its queue of operations.

    The :class:`LogFile` belongs to the writer thread running its operations;
    the event loop reads only what this class keeps for it.  One per session:
    kept small.

    Args:
        pool: the daemon's writer threads.
        file: the file (open, or to be created by :meth:`create`).
        record: the session's record: its ring is where the file catches up from.
        owner: the session; told of each file opened (see :meth:`LogOwner.log_replaced`)
            before the one it replaces is closed.
    """

    __slots__ = (
        "_at",
        "_error",
        "_failed_at",
        "_file",
        "_lost",
        "_opened",
        "_owner",
        "_queued",
        "_record",
        "_recovering",
        "_reported",
        "_room",
        "_state",
        "_stem",
        "_writes",
        "_wrote",
        "format",
    )

    def __init__(self, pool: LogWriters, file: LogFile, record: Record, owner: LogOwner) -> None:
        super().__init__(pool, file.directory.path)
        self._file = file
        self._record = record
        self._owner = owner
        self.format = file.format
        self._stem = file.stem
        #: Where the file stood after the last operation done.
        self._at = file.position()
        #: Bytes of output queued, and write operations queued or running.
        self._queued = 0
        self._writes = 0
        self._state = _State.WRITING
        self._failed_at = 0.0
        #: A failure or stall was logged, and no recovery since.
        self._reported = False
        self._lost = False
        #: Set by the thread: what to tell the event loop after the operation.
        self._opened = False
        self._error: str | None = None
        self._wrote = False
        #: Set by the event loop: it waits for room, it catches up after a failure.
        self._room: trio.Event | None = None
        self._recovering = False
        file.keep_retired = True

    @classmethod
    def create(cls, pool: LogWriters, file: LogFile, record: Record, owner: LogOwner) -> LogWriter:
        """A writer whose first operation creates ``file`` (see :meth:`.LogFile.unopened`)."""
        writer = cls(pool, file, record, owner)
        writer.put(writer._open, (file.stem, file_stem(file.stem + "~1")))
        return writer

    # --- what the event loop reads ------------------------------------------------

    @property
    def session(self) -> str:
        """The session's name, for log events."""
        return str(self._owner.name)

    @property
    def label(self) -> str:
        return f"log of {self.session}"

    @property
    def stem(self) -> str:
        return self._stem

    @property
    def path(self) -> str:
        return f"{self.directory}/{self._stem}.log"

    @property
    def closed(self) -> bool:
        """No longer written (the session ended, or the file could not be made)."""
        return self.closing or self._lost

    @property
    def lost(self) -> bool:
        """The file could not be created: the session is served without one."""
        return self._lost

    @property
    def owner(self) -> OwnedFd | None:
        """The file being written, if it is open (for the fd store and a handover)."""
        owner = self._file.open_owner
        return None if owner is None or self.closed else owner

    @property
    def written_to(self) -> int:
        return self._at.written_to

    @property
    def stalled(self) -> bool:
        return self._state is _State.STALLED

    @property
    def full(self) -> bool:
        """So much is queued that the session's reader should wait (:meth:`wait_room`).

        Never once the file stalled or failed: it no longer paces the session.
        """
        return self._queued > MAX_QUEUED and self._state is _State.WRITING

    def meta(self) -> dict[str, Any]:
        """What the session's record says of the file (as of the last operation done)."""
        return self._file.meta(self._at)

    # --- what the event loop asks for -------------------------------------------------

    def write(self, data: bytes, end: int, read_ns: int | None = None) -> None:
        """Queue one batch of output, which ends at stream offset ``end``, read
        at ``read_ns`` (nanoseconds since the epoch; now if None)."""
        if self.closing or self._lost:
            return
        if self._state is _State.WRITING:
            self._queue_output(data, end, time.time_ns() if read_ns is None else read_ns)
        elif self._state is _State.FAILED and time.monotonic() - self._failed_at >= RETRY_INTERVAL:
            self.catch_up()

    def catch_up(self) -> None:
        """Queue what the ring holds beyond the file (after a failure, a stall or a crash)."""
        if self.closing or self._lost or self._writes or self._state is _State.STALLED:
            return
        if self._file.closed:  # an ended session's, or one that is not made yet
            return
        record = self._record
        done = self._file.written_to  # nothing is writing: the thread leaves it alone
        if done >= record.end:
            self._state = _State.WRITING
            return
        first, chunks = record.read_from(done)
        if first > done:
            log.warning("logfile.gap", session=self.session, path=self.path, missing=first - done)
            self.put(lambda file: file.skip_to(first))
        self._recovering = self._state is not _State.WRITING
        self._state = _State.WRITING
        end = first
        for chunk in chunks:
            end += len(chunk)
            self._queue_output(chunk, end, None)

    async def wait_room(self) -> None:
        """Wait until the file's writer has room again (see :data:`MAX_QUEUED`).

        After :data:`STALL_TIMEOUT` the file is stalled and this returns: the
        session goes on draining without it.
        """
        with self.lock:
            if not self.full:
                return
            self._room = room = trio.Event()
        self.hurry()
        with trio.move_on_after(STALL_TIMEOUT):
            await room.wait()
            return
        self._room = None
        self._stall()

    async def snapshot(self) -> LogSnapshot | None:
        """Open what has been written so far for reading (after what is queued).

        Returns:
            None if the file's writer did not answer within :data:`STALL_TIMEOUT`.

        Raises:
            LogFileError: a file cannot be opened, or is not a regular file.
        """
        result: list[LogSnapshot | LogFileError] = []
        done = trio.Event()

        def take(file: LogFile) -> None:
            try:
                found: LogSnapshot | LogFileError = file.snapshot()
            except LogFileError as exc:
                found = exc
            except OSError as exc:
                found = LogFileError(f"cannot read {self.path}: {exc.strerror}")
            result.append(found)
            self.pool.post(done.set)

        def late(file: LogFile) -> None:
            if result:
                _close_snapshot(result[0])

        taken = False
        try:
            if not self.put(take):
                with trio.move_on_after(STALL_TIMEOUT):
                    await done.wait()
            if not result:
                return None
            taken = True
        finally:
            if not taken:  # late, or the request was cancelled: close what it opens
                self.put(late)
        found = result[0]
        if isinstance(found, LogFileError):
            raise found
        return found

    def rename(self, stem: str) -> None:
        """Follow a session rename (see :meth:`.LogFile.rename`)."""
        old, self._stem = self._stem, file_stem(stem)
        self.put(
            lambda file: self._try(file.rename, stem, event="logfile.rename_failed"),
            (old, self._stem, file_stem(self._stem + "~1")),
        )

    def move_aside(self) -> str:
        """Move the files aside (see :meth:`.LogFile.move_aside`); returns their new path."""
        aside = file_stem(self._stem + "~1")
        self.put(
            lambda file: self._try(file.move_aside, event="logfile.move_failed"),
            (self._stem, aside),
        )
        return f"{self.directory}/{aside}.log"

    def remove_files(self) -> None:
        """Delete the files (``rm`` without ``--keep-logs``)."""
        self.put(
            lambda file: self._try(file.remove_files, event="logfile.remove_failed"),
            (self._stem,),
        )

    def close(self) -> None:
        """Stop writing once what is queued is written, and close the file."""
        if self.closing:
            return
        self.closing = True
        self.put(LogFile.close)

    # --- the queue ----------------------------------------------------------------

    def _queue_output(self, data: bytes, end: int, ns: int | None) -> None:
        """Queue a batch of output: with the output queued last if it has not
        started (one write for a burst of keystrokes' echoes), else on its own."""
        with self.lock:
            self._queued += len(data)
            urgent = self._queued >= URGENT_BYTES or self._room is not None
            last = self.last_queued()
            if isinstance(last, _Write) and not last.dropped and last.size < MERGE_BYTES:
                last.pieces.append((data, end, ns))
                last.size += len(data)
                if urgent:
                    self.hurry_locked()
                return
            self._writes += 1
        self.put(_Write(data, end, ns), urgent=urgent)

    def _stall(self) -> None:
        """The writer did not answer in time: drop the output queued, go on without the file."""
        with self.lock:
            if not self.running and not self._writes:
                return  # it answered meanwhile
            self._drop_writes()
            self._state = _State.STALLED
        self._reported = True
        log.warning(
            "logfile.stalled",
            session=self.session,
            path=self.path,
            waited=STALL_TIMEOUT,
            why="its writer has not returned (a stalled disk?); the session "
            "drains without it, and the file catches up from the ring when it returns",
        )

    # --- in the writer thread -----------------------------------------------------------

    def run(self, op: object) -> None:
        """Run one operation (in a writer thread)."""
        if isinstance(op, _Write):
            self._write(op)
        else:
            assert callable(op)
            op(self._file)
        self._at = self._file.position()

    def _open(self, file: LogFile) -> None:
        try:
            file.open_new()
        except (LogFileError, OSError) as exc:
            self._error = _reason(exc)
            with self.lock:
                self._lost = True
                self._drop_writes()
            return
        self._opened = True

    def _try(self, fn: Callable[..., object], *args: object, event: str) -> None:
        try:
            fn(*args)
        except (LogFileError, OSError) as exc:
            error = _reason(exc)
            self.pool.post(lambda: log.error(event, session=self.session, error=error))

    def _write(self, op: _Write) -> None:
        """Write one write operation's output (in the thread)."""
        if op.dropped:
            return
        file = self._file
        try:
            for data, end, ns in op.pieces:
                if self._lost or file.closed or file.written_to != end - len(data):
                    continue  # not the file's next bytes: the catch-up after a failure has them
                file.write(data, end, ns)
                self._wrote = True
        except (LogFileError, OSError) as exc:
            self._error = _reason(exc)
            with self.lock:
                self._drop_writes()
        finally:
            with self.lock:
                self._queued -= op.size
                self._writes -= 1

    def _drop_writes(self) -> None:
        """Drop the output queued (call with the lock held).  The operations stay
        queued, and are done at once: other writers count on their numbers."""
        for op in self.ops or ():
            if isinstance(op, _Write) and not op.dropped:
                op.dropped = True
                self._queued -= op.size
                self._writes -= 1

    def news(self) -> News:
        """What to tell the event loop after an operation (the lock held)."""
        posts: News = []
        retired = self._file.retired
        if self._opened or retired:
            self._opened = False
            self._file.retired = None
            posts.append(lambda: self._swap(retired or []))
        if self._error is not None:
            error, self._error = self._error, None
            posts.append(lambda: self._failed(error))
        elif self._wrote:
            self._wrote = False
            if self._recovering:
                self._recovering = False
                posts.append(self._writing_again)
        if self._state is _State.STALLED and not self.running:
            posts.append(self._back)
        if self._room is not None and self._queued <= MAX_QUEUED // 2:
            room, self._room = self._room, None
            posts.append(room.set)
        return posts

    # --- back on the event loop -------------------------------------------------------

    def _swap(self, retired: list[OwnedFd]) -> None:
        """A file was opened (created, or by a rotation): store it, then close those it
        replaced (in the thread: closing a file may flush it, to a disk that stalls)."""
        owner = self._file.open_owner
        if owner is not None and not self.closed:
            self._owner.log_replaced(owner)
        if retired:
            self.put(lambda file: _close_all(retired))

    def _failed(self, error: str) -> None:
        if self._lost:
            log.error("logfile.create_failed", session=self.session, error=error)
            return
        if not self._reported:
            log.error("logfile.write_failed", session=self.session, error=error, path=self.path)
            self._reported = True
        self._state = _State.FAILED
        self._failed_at = time.monotonic()
        self._recovering = False

    def _writing_again(self) -> None:
        if self._reported:
            self._reported = False
            log.info("logfile.writing_again", session=self.session, path=self.path)

    def _back(self) -> None:
        """The stuck operation returned: catch up now."""
        if self._state is _State.STALLED:
            self._state = _State.FAILED
            self.catch_up()


def _reason(exc: LogFileError | OSError) -> str:
    """What went wrong, in the words for a log event."""
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


def _close_all(owners: list[OwnedFd]) -> None:
    for owner in owners:
        owner.close()


def _close_snapshot(found: LogSnapshot | LogFileError) -> None:
    if isinstance(found, LogSnapshot):
        found.close()
