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
  Threads stuck in a system call do not hold the others up: a job running
  longer than :data:`STUCK_AFTER` makes the pool start another thread, up to
  :data:`MAX_THREADS`.
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

import contextlib
import enum
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import structlog
import trio

from ..io.fds import OwnedFd
from ..io.record import Record
from .logfile import LogFile, LogFileError, LogSnapshot, file_stem

log = structlog.get_logger("consoled.logwriter")

#: Bytes of output queued for one file before its session's reader waits.
MAX_QUEUED: Final = 256 * 1024
#: Seconds a reader waits for its file's writer before it goes on without the file.
STALL_TIMEOUT: Final = 1.0
#: Seconds between attempts to write a file again after a write failed.
RETRY_INTERVAL: Final = 5.0
#: Seconds after which a running operation counts as stuck (another thread starts).
STUCK_AFTER: Final = 0.25
#: Writer threads at most.
MAX_THREADS: Final = 8


class _State(enum.Enum):
    #: Output is queued as it comes.
    WRITING = "writing"
    #: A write failed: output is not queued; the file catches up every RETRY_INTERVAL.
    FAILED = "failed"
    #: Its writer did not answer in time: output is not queued until it does.
    STALLED = "stalled"


class _Write:
    """An operation: one batch of output for the file."""

    __slots__ = ("data", "dropped", "end", "ns")

    def __init__(self, data: bytes, end: int, ns: int | None) -> None:
        self.data = data
        self.end = end
        self.ns = ns
        #: Not to be written after all (it stays queued: see LogWriter._drop_writes).
        self.dropped = False


#: An operation: output to write, or a callable the writer thread runs with the file.
_Op = _Write | Callable[[LogFile], object]


class _Sched(enum.Enum):
    """Where a writer is in the pool (see LogWriters)."""

    IDLE = "idle"  # nothing queued
    READY = "ready"  # in the ready queue
    RUNNING = "running"  # a thread runs one of its operations
    BLOCKED = "blocked"  # its next operation waits for another writer's


class LogWriters:
    """The writer threads of one daemon, shared by every session's :class:`LogWriter`.

    A writer's operations run one at a time, in order.  Operations on the
    names of a log (creating it, renaming, moving aside, removing) also wait
    for every operation that another writer queued earlier on the same
    names: a session removed and made again, or a container id reused, has
    its old files removed or moved aside before the new file is made, never
    after it.  An operation waits only for operations queued before it, so
    no two writers ever wait for each other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        #: Writers whose next operation may run, in turn.
        self._ready: deque[LogWriter] = deque()
        self._threads = 0
        self._waiting = 0
        #: What each busy thread runs, and since when (to see stuck ones).
        self._running: dict[int, tuple[LogWriter, float]] = {}
        #: The writer that last queued an operation on each log's names (by
        #: directory and stem).
        self._names: dict[tuple[str, str], LogWriter] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False

    def _bind(self) -> bool:
        """Threads are used only inside a trio run (their results go back to it)."""
        if self._token is None:
            try:
                self._token = trio.lowlevel.current_trio_token()
            except RuntimeError:
                return False
        return True

    def _claim(self, writer: LogWriter, stems: tuple[str, ...]) -> list[tuple[LogWriter, int]]:
        """``writer`` queues an operation on the names of ``stems``: what it must wait
        for (call with the lock held)."""
        after = []
        for stem in stems:
            name = (writer._dir_path, stem)
            before = self._names.get(name)
            if before is not None and before is not writer and before._done < before._count:
                after.append((before, before._count))
            self._names[name] = writer
            writer._names.add(name)
        return after

    def _schedule(self, writer: LogWriter) -> None:
        """``writer`` is idle or blocked and may have something to run (lock held)."""
        if not writer._ops:
            writer._sched = _Sched.IDLE
            return
        following = writer._done + 1
        waits = [(w, n) for k, w, n in writer._barriers if k <= following and w._done < n]
        writer._barriers = [(k, w, n) for k, w, n in writer._barriers if w._done < n]
        if waits:
            writer._sched = _Sched.BLOCKED
            for before, _ in waits:
                if writer not in before._dependents:
                    before._dependents.append(writer)
            return
        writer._sched = _Sched.READY
        self._ready.append(writer)
        if self._waiting:
            self._wake.notify()
        elif self._threads < MAX_THREADS and (self._threads == 0 or self._all_stuck()):
            self._start_thread()

    def _all_stuck(self) -> bool:
        now = time.monotonic()
        return len(self._running) >= self._threads and all(
            now - since > STUCK_AFTER for _, since in self._running.values()
        )

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name="consoled-logs", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # out of threads: the ones running will get to it
            log.error("logwriter.thread_failed", error=str(exc))
            return
        self._threads += 1

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while not self._ready:
                    if self._closed:
                        self._threads -= 1
                        return
                    self._waiting += 1
                    self._wake.wait()
                    self._waiting -= 1
                writer = self._ready.popleft()
                op = writer._ops.popleft()
                writer._sched = _Sched.RUNNING
                self._running[me] = (writer, time.monotonic())
                more = self._ready and not self._waiting and self._threads < MAX_THREADS
                if more and self._all_stuck():
                    self._start_thread()
            try:
                writer._run(op)
            except Exception:  # a bug: it costs this operation, never the thread
                log.exception("logwriter.failed", session=writer.session)
            with self._lock:
                del self._running[me]
                news = self._finished(writer)
            if news:
                self.post(functools.partial(writer._news, news))

    def _finished(self, writer: LogWriter) -> list[Callable[[], object]]:
        """``writer``'s operation is done: what runs next, and what to tell the
        event loop (lock held)."""
        writer._done += 1
        self._schedule(writer)
        dependents, writer._dependents = writer._dependents, []
        for waiting in dependents:
            if waiting._sched is _Sched.BLOCKED:
                self._schedule(waiting)
        if writer._sched is _Sched.IDLE and writer._closing:
            for name in writer._names:  # done with its names: nothing will wait for it
                if self._names.get(name) is writer:
                    del self._names[name]
        news = writer._after()
        if news:
            writer._news_pending += 1
        return news

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the event loop (from a writer thread)."""
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # done: nothing waits for it
            self._token.run_sync_soon(fn)

    def stuck(self) -> list[LogWriter]:
        """The writers whose operation has run longer than :data:`STUCK_AFTER`."""
        now = time.monotonic()
        with self._lock:
            return [w for w, since in self._running.values() if now - since > STUCK_AFTER]

    def close(self, timeout: float) -> bool:
        """Let the threads finish what is queued, for at most ``timeout`` seconds.

        Returns:
            True if everything queued was done.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            while self._ready or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
        return True


class LogWriter:
    """The event loop's handle on one session's log file.

    The :class:`LogFile` belongs to the writer thread running its operations;
    the event loop reads only what this class keeps for it.

    Args:
        pool: the daemon's writer threads.
        file: the file (open, or to be created by :meth:`create`).
        record: the session's record: its ring is where the file catches up from.
        session: gives the session's name, for log events.
        replaced: called on the event loop with each file a rotation (or the
            creation) opens, before the one it replaces is closed.
    """

    def __init__(
        self,
        pool: LogWriters,
        file: LogFile,
        record: Record,
        *,
        session: Callable[[], str],
        replaced: Callable[[OwnedFd], None],
    ) -> None:
        self._pool = pool
        self._file = file
        self._record = record
        self._session = session
        self._replaced = replaced
        self.format = file.format
        self._dir_path = file.directory.path
        self._stem = file.stem
        #: What the file's record says, as of the last operation finished.
        self._meta = file.meta()
        self._ops: deque[_Op] = deque()
        #: The pool's part (see LogWriters): where the writer is, operations
        #: queued and done so far, operations that wait for another writer's
        #: (its operation number, the other writer, the number it must reach),
        #: writers that wait for this one, the names it queued operations on.
        self._sched = _Sched.IDLE
        self._count = 0
        self._done = 0
        self._barriers: list[tuple[int, LogWriter, int]] = []
        self._dependents: list[LogWriter] = []
        self._names: set[tuple[str, str]] = set()
        #: What the threads told the event loop that it has not run yet.
        self._news_pending = 0
        #: Bytes of output queued.
        self._queued = 0
        #: Write operations queued or running.
        self._writes = 0
        self._state = _State.WRITING
        self._failed_at = 0.0
        #: A failure or stall was logged, and no recovery since.
        self._reported = False
        self._lost = False
        self._closing = False
        #: Set by the thread: things to tell the event loop after the operation.
        self._retired: list[OwnedFd] = []
        self._opened: OwnedFd | None = None
        self._error: str | None = None
        self._wrote = False
        #: Set by the event loop: what it waits for.
        self._room: trio.Event | None = None
        self._idle: list[tuple[int, trio.Event]] = []
        self._recovering = False
        file.retire = self._retired.append
        with pool._lock:
            pool._claim(self, (self._stem,))  # nothing queued: it waits for nobody

    @classmethod
    def create(
        cls,
        pool: LogWriters,
        file: LogFile,
        record: Record,
        *,
        session: Callable[[], str],
        replaced: Callable[[OwnedFd], None],
    ) -> LogWriter:
        """A writer whose first operation creates ``file`` (see :meth:`.LogFile.unopened`)."""
        writer = cls(pool, file, record, session=session, replaced=replaced)
        writer._queue(writer._open, names=(file.stem, file_stem(file.stem + "~1")))
        return writer

    # --- what the event loop reads ------------------------------------------------

    @property
    def session(self) -> str:
        """The session's name, for log events."""
        return self._session()

    @property
    def path(self) -> str:
        return f"{self._dir_path}/{self._stem}.log"

    @property
    def closed(self) -> bool:
        """No longer written (the session ended, or the file could not be made)."""
        return self._closing or self._lost

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
        return int(self._meta["written_to"])

    @property
    def stalled(self) -> bool:
        return self._state is _State.STALLED

    @property
    def full(self) -> bool:
        """So much is queued that the session's reader should wait (:meth:`wait_room`)."""
        return self._queued > MAX_QUEUED

    def meta(self) -> dict[str, Any]:
        """What the session's record says of the file (as of the last operation done)."""
        return self._meta

    # --- what the event loop asks for -------------------------------------------------

    def write(self, data: bytes, end: int) -> None:
        """Queue one batch of output, which ends at stream offset ``end``."""
        if self._closing or self._lost:
            return
        if self._state is _State.WRITING:
            self._queue(_Write(data, end, time.time_ns()), len(data))
        elif self._state is _State.FAILED and time.monotonic() - self._failed_at >= RETRY_INTERVAL:
            self.catch_up()

    def catch_up(self) -> None:
        """Queue what the ring holds beyond the file (after a failure, a stall or a crash)."""
        if self._closing or self._lost or self._writes or self._state is _State.STALLED:
            return
        record = self._record
        done = self._file.written_to  # nothing is writing: the thread leaves it alone
        if done >= record.end:
            self._state = _State.WRITING
            return
        first, chunks = record.read_from(done)
        if first > done:
            log.warning("logfile.gap", session=self.session, path=self.path, missing=first - done)
            self._queue(lambda file: file.skip_to(first))
        self._recovering = self._state is not _State.WRITING
        self._state = _State.WRITING
        end = first
        for chunk in chunks:
            end += len(chunk)
            self._queue(_Write(chunk, end, None), len(chunk))

    async def wait_room(self) -> None:
        """Wait until the file's writer has room again (see :data:`MAX_QUEUED`).

        After :data:`STALL_TIMEOUT` the file is stalled and this returns: the
        session goes on draining without it.
        """
        with self._pool._lock:
            if not self.full:
                return
            self._room = room = trio.Event()
        with trio.move_on_after(STALL_TIMEOUT):
            await room.wait()
            return
        self._room = None
        self._stall()

    @property
    def idle(self) -> bool:
        """Every operation queued is done, and the event loop knows what came of it."""
        return self._done == self._count and not self._news_pending

    async def wait_idle(self) -> None:
        """Wait until every operation queued so far is done, and the event loop
        knows what came of it."""
        target = self._count
        while True:
            with self._pool._lock:
                if self._done >= target and not self._news_pending:
                    return
                event = trio.Event()
                self._idle.append((target, event))
            await event.wait()

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
            self._post(done.set)

        def late(file: LogFile) -> None:
            if result:
                _close_snapshot(result[0])

        if not self._queue(take):
            with trio.move_on_after(STALL_TIMEOUT):
                await done.wait()
        if not result:
            self._queue(late)  # whatever it opens when it gets there is closed
            return None
        found = result[0]
        if isinstance(found, LogFileError):
            raise found
        return found

    def rename(self, stem: str) -> None:
        """Follow a session rename (see :meth:`.LogFile.rename`)."""
        old, self._stem = self._stem, file_stem(stem)
        names = (old, self._stem, file_stem(self._stem + "~1"))
        self._queue(
            lambda file: self._try(file.rename, stem, event="logfile.rename_failed"), names=names
        )

    def move_aside(self) -> str:
        """Move the files aside (see :meth:`.LogFile.move_aside`); returns their new path."""
        aside = file_stem(self._stem + "~1")
        self._queue(
            lambda file: self._try(file.move_aside, event="logfile.move_failed"),
            names=(self._stem, aside),
        )
        return f"{self._dir_path}/{aside}.log"

    def remove_files(self) -> None:
        """Delete the files (``rm`` without ``--keep-logs``)."""
        self._queue(
            lambda file: self._try(file.remove_files, event="logfile.remove_failed"),
            names=(self._stem,),
        )

    def close(self) -> None:
        """Stop writing once what is queued is written, and close the file."""
        if self._closing:
            return
        self._closing = True
        self._queue(LogFile.close)

    # --- the queue ----------------------------------------------------------------

    def _queue(self, op: _Op, size: int = 0, names: tuple[str, ...] = ()) -> bool:
        """Queue ``op`` (output of ``size`` bytes, or an operation on the log's
        ``names``); returns True if it ran here and now (outside a trio run)."""
        pool = self._pool
        if not pool._bind():
            self._count += 1
            self._run(op)
            self._done += 1
            for fn in self._after():
                fn()
            return True
        with pool._lock:
            self._count += 1
            if names:
                for before, n in pool._claim(self, names):
                    self._barriers.append((self._count, before, n))
            self._ops.append(op)
            if size:
                self._queued += size
                self._writes += 1
            if self._sched is _Sched.IDLE:
                pool._schedule(self)
        return False

    def _post(self, fn: Callable[[], object]) -> None:
        if self._pool._token is None:
            fn()
        else:
            self._pool.post(fn)

    def _stall(self) -> None:
        """The writer did not answer in time: drop the output queued, go on without the file."""
        with self._pool._lock:
            if self._sched is not _Sched.RUNNING and not self._writes:
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

    def _run(self, op: _Op) -> None:
        if isinstance(op, _Write):
            self._write(op)
        else:
            op(self._file)
        self._meta = self._file.meta()

    def _open(self, file: LogFile) -> None:
        try:
            file.open_new()
        except (LogFileError, OSError) as exc:
            self._error = str(exc) if isinstance(exc, LogFileError) else exc.strerror
            with self._pool._lock:
                self._lost = True
                self._drop_writes()
            return
        self._opened = file.open_owner

    def _try(self, fn: Callable[..., object], *args: object, event: str) -> None:
        try:
            fn(*args)
        except (LogFileError, OSError) as exc:
            error = str(exc) if isinstance(exc, LogFileError) else exc.strerror
            self._post(lambda: log.error(event, session=self.session, error=error))

    def _write(self, op: _Write) -> None:
        """Run one write operation (called by it, in the thread)."""
        if op.dropped:
            return
        file = self._file
        try:
            if self._lost or file.closed or file.written_to != op.end - len(op.data):
                return  # not the file's next bytes: the catch-up after a failure has them
            file.write(op.data, op.end, op.ns)
        except (LogFileError, OSError) as exc:
            self._error = str(exc) if isinstance(exc, LogFileError) else exc.strerror
            with self._pool._lock:
                self._drop_writes()
            return
        finally:
            with self._pool._lock:
                self._queued -= len(op.data)
                self._writes -= 1
        self._wrote = True

    def _drop_writes(self) -> None:
        """Drop the output queued (call with the lock held).  The operations stay
        queued, and are done at once: other writers count on their numbers."""
        for op in self._ops:
            if isinstance(op, _Write) and not op.dropped:
                op.dropped = True
                self._queued -= len(op.data)
                self._writes -= 1

    def _after(self) -> list[Callable[[], object]]:
        """What to tell the event loop after an operation (called with the lock held)."""
        posts: list[Callable[[], object]] = []
        if self._opened is not None or self._retired:
            opened, self._opened = self._opened, None
            retired, self._retired[:] = list(self._retired), []
            posts.append(lambda: self._swap(opened, retired))
        if self._error is not None:
            error, self._error = self._error, None
            posts.append(lambda: self._failed(error))
        elif self._wrote:
            self._wrote = False
            if self._recovering:
                self._recovering = False
                posts.append(self._writing_again)
        if self._state is _State.STALLED and self._sched is not _Sched.RUNNING:
            posts.append(self._back)
        if self._room is not None and self._queued <= MAX_QUEUED // 2:
            room, self._room = self._room, None
            posts.append(room.set)
        if not posts and any(self._done >= target for target, _ in self._idle):
            posts.append(_nothing)  # the news that it is idle: see _news
        return posts

    # --- back on the event loop -------------------------------------------------------

    def _news(self, news: list[Callable[[], object]]) -> None:
        """What came of an operation, on the event loop."""
        for fn in news:
            fn()
        with self._pool._lock:
            self._news_pending -= 1
            if self._news_pending:
                return
            waiting = self._idle
            self._idle = [(t, event) for t, event in waiting if self._done < t]
            for target, event in waiting:
                if self._done >= target:
                    event.set()

    def _swap(self, opened: OwnedFd | None, retired: list[OwnedFd]) -> None:
        """A file was opened (created, or by a rotation): store it, then close those it
        replaced (in the thread: closing a file may flush it, to a disk that stalls)."""
        owner = self._file.open_owner
        if owner is not None and not self.closed:
            self._replaced(owner)
        if retired:
            self._queue(lambda file: _close_all(retired))

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


def _nothing() -> None:
    pass


def _close_all(owners: list[OwnedFd]) -> None:
    for owner in owners:
        owner.close()


def _close_snapshot(found: LogSnapshot | LogFileError) -> None:
    if isinstance(found, LogSnapshot):
        found.close()
